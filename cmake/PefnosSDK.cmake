# Installs the plugin SDK as the CMake package PefnosSDK (install component
# `sdk`): include/pefnos/, the imported target pefnos::sdk, pefnos_add_plugin
# and PEFNOS_PLUGIN_ABI. A third party builds a plugin against it with
# find_package(PefnosSDK) and never sees the rest of pefnos.
include(CMakePackageConfigHelpers)

# The plugin ABI version, read from the header that defines it (a change to
# the header re-runs configure).
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/include/pefnos/plugin.h)
file(STRINGS ${PROJECT_SOURCE_DIR}/include/pefnos/plugin.h pefnos_abi_line
     REGEX "kPluginAbiVersion = [0-9]+;")
string(REGEX MATCH "[0-9]+" PEFNOS_PLUGIN_ABI "${pefnos_abi_line}")
if(NOT PEFNOS_PLUGIN_ABI)
  message(FATAL_ERROR "cannot read kPluginAbiVersion from include/pefnos/plugin.h")
endif()

set(PEFNOS_SDK_CMAKE_DIR lib/cmake/PefnosSDK)
set_target_properties(pefnos_sdk PROPERTIES EXPORT_NAME sdk)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/pefnos DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        COMPONENT sdk FILES_MATCHING PATTERN "*.h")
install(TARGETS pefnos_sdk EXPORT PefnosSDKTargets COMPONENT sdk)
install(EXPORT PefnosSDKTargets NAMESPACE pefnos:: DESTINATION ${PEFNOS_SDK_CMAKE_DIR}
        COMPONENT sdk)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/PefnosSDKConfig.cmake.in
  ${PROJECT_BINARY_DIR}/PefnosSDKConfig.cmake INSTALL_DESTINATION ${PEFNOS_SDK_CMAKE_DIR})
# Headers only: any architecture may use them; a plugin must still be built
# for the architecture of the pefnos that loads it.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/PefnosSDKConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/PefnosSDKConfig.cmake
              ${PROJECT_BINARY_DIR}/PefnosSDKConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/PefnosPlugin.cmake
        DESTINATION ${PEFNOS_SDK_CMAKE_DIR} COMPONENT sdk)
