#include <link.h>
#include <elf.h>
#include <sys/stat.h>

#include <algorithm>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/base/log.h"
#include "core/plugin/plugin.h"

namespace pefnos::plugin {
namespace fs = std::filesystem;

namespace {

// What dlopen cannot be trusted with: it maps a file's segments as its program
// headers say, and touching a segment that lies past the end of a truncated
// file kills the process with SIGBUS. So the header and every segment must be
// inside the file, and the file must be a shared object of this machine's kind.
Status checkElf(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error{"cannot be read: " + std::string(std::strerror(errno))};
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) return Error{"cannot be read: " + ec.message()};
  ElfW(Ehdr) header{};
  if (!in.read(reinterpret_cast<char*>(&header), sizeof header) ||
      std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) {
    return Error{"not an ELF file"};
  }
  ElfW(Ehdr) own{};  // what this process's own binary is
  std::ifstream self("/proc/self/exe", std::ios::binary);
  if (self.read(reinterpret_cast<char*>(&own), sizeof own) &&
      (header.e_ident[EI_CLASS] != own.e_ident[EI_CLASS] ||
       header.e_ident[EI_DATA] != own.e_ident[EI_DATA] || header.e_machine != own.e_machine)) {
    return Error{"built for another machine (ELF class " +
                 std::to_string(header.e_ident[EI_CLASS]) + ", machine " +
                 std::to_string(header.e_machine) + ")"};
  }
  if (header.e_type != ET_DYN) return Error{"an ELF file but not a shared object"};
  if (header.e_phentsize != sizeof(ElfW(Phdr)) || header.e_phnum == 0 || header.e_phoff > size ||
      uintmax_t(header.e_phnum) * sizeof(ElfW(Phdr)) > size - header.e_phoff) {
    return Error{"truncated or damaged: its program headers are not in the file"};
  }
  if (header.e_shoff != 0 &&
      (header.e_shoff > size || uintmax_t(header.e_shnum) * header.e_shentsize > size - header.e_shoff)) {
    return Error{"truncated or damaged: its section headers are not in the file"};
  }
  in.seekg(static_cast<std::streamoff>(header.e_phoff));
  for (int i = 0; i < header.e_phnum; ++i) {
    ElfW(Phdr) segment{};
    if (!in.read(reinterpret_cast<char*>(&segment), sizeof segment)) {
      return Error{"truncated or damaged: its program headers cannot be read"};
    }
    // Compared so that no sum can wrap around, whatever the header says.
    if (segment.p_type != PT_NULL &&
        (segment.p_offset > size || segment.p_filesz > size - segment.p_offset)) {
      return Error{"truncated: segment " + std::to_string(i) + " ends at byte " +
                   std::to_string(uintmax_t(segment.p_offset) + segment.p_filesz) +
                   " but the file has " + std::to_string(size)};
    }
  }
  return ok();
}

}  // namespace

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
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return refuse(path, "cannot be read: " + std::string(std::strerror(errno)));
  // Opening a FIFO would wait for a writer forever, and a device may never end.
  if (!S_ISREG(st.st_mode)) return refuse(path, "not a loadable shared object: not a regular file");
  // As for its directory: whoever can write the file could run code inside the daemon.
  if ((st.st_mode & S_IWOTH) || (st.st_mode & S_IWGRP))
    return refuse(path, "the plugin file is writable by others than its owner");
  // A link may lead out of the checked directory: where the file really lies
  // must be as closed, or anyone could swap the file there.
  std::error_code ec;
  const fs::path real = fs::canonical(path, ec);
  if (ec) return refuse(path, "cannot be resolved: " + ec.message());
  struct stat dir {};
  if (stat(real.parent_path().c_str(), &dir) != 0 || (dir.st_mode & S_IWOTH) || (dir.st_mode & S_IWGRP))
    return refuse(path, "it lies in " + real.parent_path().string() + ", which is writable by others than its owner");
  if (auto elf = checkElf(path); !elf) {
    return refuse(path, "not a loadable shared object: " + elf.error().message);
  }
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
      steps_[name] = Loaded{library, d};
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

std::shared_ptr<Step> Registry::makeStep(const std::string& name) {
  auto it = steps_.find(name);
  if (it == steps_.end()) return nullptr;
  std::unique_ptr<Step> made = it->second.descriptor->make_step(host_);
  if (!made) return nullptr;
  return std::shared_ptr<Step>(made.release(),
                               [library = it->second.library](Step* step) { delete step; });
}

std::vector<std::string> Registry::stepNames() const {
  std::vector<std::string> names;
  for (const auto& [name, loaded] : steps_) names.push_back(name);
  return names;
}

}  // namespace pefnos::plugin
