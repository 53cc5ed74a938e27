// Part of the plugin API: how a plugin presents itself to pefnos.
//
// A plugin is a shared object exporting one symbol through Boost.DLL:
//
//   #include <pefnos/plugin.h>
//   static const pefnos::PluginDescriptor& describe() {
//     static const pefnos::PluginDescriptor d{pefnos::kPluginAbiVersion,
//         pefnos::PluginKind::vcs, "myvcs", "1.0", "My VCS", &makeVcs, nullptr};
//     return d;
//   }
//   PEFNOS_PLUGIN(describe)
//
// The host reads abi_version before anything else and refuses a plugin built
// against other headers. Objects a plugin makes are destroyed before its
// library is unloaded.
#pragma once

#include <boost/dll/alias.hpp>
#include <memory>

#include "pefnos/host.h"
#include "pefnos/result.h"
#include "pefnos/step.h"
#include "pefnos/vcs.h"

namespace pefnos {

// Bumped whenever a change to include/pefnos/ breaks plugins built before it.
// 2: ProcessSpec.stdin_pipe, Running::write/closeInput, Repo.branches.
inline constexpr int kPluginAbiVersion = 3;

enum class PluginKind : int { vcs = 1, step = 2 };

struct PluginDescriptor {
  int abi_version;  // first, always; kPluginAbiVersion of the headers the plugin was built with
  PluginKind kind;
  const char* name;  // what configuration rows name: repository.vcs = "git"
  const char* version;
  const char* description;
  std::unique_ptr<Vcs> (*make_vcs)(Host& host);    // kind == vcs
  std::unique_ptr<Step> (*make_step)(Host& host);  // kind == step
};

using PluginEntry = const PluginDescriptor&();
inline constexpr const char* kPluginSymbol = "pefnos_plugin";

}  // namespace pefnos

// Exports describe_fn (a function returning const PluginDescriptor&) as the plugin's entry.
#define PEFNOS_PLUGIN(describe_fn) BOOST_DLL_ALIAS(describe_fn, pefnos_plugin)
