#include <sys/stat.h>

#include <algorithm>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <filesystem>

#include "core/base/log.h"
#include "core/plugin/plugin.h"

namespace pefnos::plugin {
namespace fs = std::filesystem;

std::string builtinPluginDir() {
  if (const char* env = std::getenv("PEFNOS_PLUGIN_DIR"); env && *env) return env;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return (exe.parent_path().parent_path() / "lib" / "pefnos" / "plugins").string();
}

Registry::Registry(Host& host) : host_(host) {}

Registry::~Registry() = default;

void Registry::refuse(const std::string& path, const std::string& reason) {
  log::warning("plugin", "refused ", path, ": ", reason);
  Outcome o;
  o.path = path;
  o.reason = reason;
  outcomes_.push_back(std::move(o));
}

void Registry::loadDirectory(const std::string& dir) {
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0) {
    refuse(dir, "the plugin directory cannot be read: " + std::string(std::strerror(errno)));
    return;
  }
  // Whoever can write there could run code inside the daemon.
  if ((st.st_mode & S_IWOTH) || (st.st_mode & S_IWGRP)) {
    refuse(dir, "the plugin directory is writable by others than its owner; refusing all of it");
    return;
  }
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".so") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) loadFile(f.string());
}

void Registry::loadFile(const std::string& path) {
  auto library = std::make_shared<boost::dll::shared_library>();
  try {
    library->load(path, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    return refuse(path, std::string("not a loadable shared object: ") + e.what());
  }
  if (!library->has(kPluginSymbol)) {
    return refuse(path, std::string("not a pefnos plugin: it exports no '") + kPluginSymbol + "'");
  }
  const PluginDescriptor* d = nullptr;
  try {
    d = &library->get_alias<PluginEntry>(kPluginSymbol)();
  } catch (const std::exception& e) {
    return refuse(path, std::string("its entry failed: ") + e.what());
  }
  // Nothing but the version may be read before the version is known to match.
  if (d->abi_version != kPluginAbiVersion) {
    return refuse(path, "built for plugin ABI " + std::to_string(d->abi_version) +
                            ", this pefnos has ABI " + std::to_string(kPluginAbiVersion) +
                            ": rebuild it against this pefnos's SDK");
  }
  std::string name = d->name ? d->name : "";
  if (name.empty()) return refuse(path, "the plugin has no name");
  if (names_.count(name)) return refuse(path, "a plugin named '" + name + "' is already loaded");
  Outcome o;
  o.path = path;
  o.name = name;
  o.version = d->version ? d->version : "";
  o.description = d->description ? d->description : "";
  switch (d->kind) {
    case PluginKind::vcs:
      if (d->make_vcs == nullptr) return refuse(path, "a vcs plugin without make_vcs");
      o.kind = "vcs";
      vcs_[name] = Loaded{library, d};
      break;
    case PluginKind::step:
      if (d->make_step == nullptr) return refuse(path, "a step plugin without make_step");
      o.kind = "step";
      break;
    default:
      return refuse(path, "unknown plugin kind " + std::to_string(static_cast<int>(d->kind)));
  }
  names_.insert(name);
  o.loaded = true;
  log::info("plugin", "loaded ", o.kind, " plugin '", name, "' ", o.version, " from ", path);
  outcomes_.push_back(std::move(o));
}

std::shared_ptr<Vcs> Registry::makeVcs(const std::string& name) {
  auto it = vcs_.find(name);
  if (it == vcs_.end()) return nullptr;
  std::unique_ptr<Vcs> made = it->second.descriptor->make_vcs(host_);
  if (!made) return nullptr;
  // The deleter holds the library: the object's code stays mapped until it is gone.
  return std::shared_ptr<Vcs>(made.release(),
                              [library = it->second.library](Vcs* vcs) { delete vcs; });
}

std::vector<std::string> Registry::vcsNames() const {
  std::vector<std::string> names;
  for (const auto& [name, loaded] : vcs_) names.push_back(name);
  return names;
}

}  // namespace pefnos::plugin
