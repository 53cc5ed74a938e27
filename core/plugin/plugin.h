// The plugin room: loads shared objects with Boost.DLL and makes the objects
// they offer. It owns the loaded libraries; every object a plugin makes holds
// its library, so a library outlives everything it created.
//
// A plugin is refused, with the reason kept for `pefnos plugins list` and the
// pefnos.plugin table, when the file is not a loadable shared object, lacks
// the `pefnos_plugin` symbol, was built for another ABI version, or reuses a
// name already loaded. A directory that anyone may write is refused whole.
// Refusing one plugin never stops the others.
#pragma once

#include <uv.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/loop/loop.h"
#include "pefnos/host.h"
#include "pefnos/plugin.h"

namespace boost::dll {
class shared_library;
}

namespace pefnos::plugin {

// Where the plugins built with pefnos are: $PEFNOS_PLUGIN_DIR, else
// lib/pefnos/plugins beside the binary's bin/ (installed and build trees alike).
std::string builtinPluginDir();

struct Outcome {
  std::string path;
  bool loaded = false;
  std::string name, kind, version, description;
  std::string reason;  // why it was refused
};

class Registry {
 public:
  explicit Registry(Host& host);
  ~Registry();
  Registry(const Registry&) = delete;  // owns libraries
  Registry& operator=(const Registry&) = delete;

  // Loads every *.so of dir, in name order.
  void loadDirectory(const std::string& dir);
  // Loads one file (what loadDirectory does for each).
  void loadFile(const std::string& path);

  const std::vector<Outcome>& outcomes() const { return outcomes_; }
  // A new VCS object of the plugin that calls itself `name`; nullptr if none.
  // Make one per plugin, not per repository: a plugin may serialise work on
  // shared proxies inside its object.
  // The object keeps its library loaded as long as it lives.
  std::shared_ptr<Vcs> makeVcs(const std::string& name);
  std::vector<std::string> vcsNames() const;
  // A step object of the step plugin `name`; nullptr if none. Steps are
  // stateless: one object may plan and interpret any number of steps.
  std::shared_ptr<Step> makeStep(const std::string& name);
  std::vector<std::string> stepNames() const;

 private:
  struct Loaded {
    std::shared_ptr<boost::dll::shared_library> library;
    const PluginDescriptor* descriptor;
  };
  void refuse(const std::string& path, const std::string& reason);

  Host& host_;
  std::map<std::string, Loaded> vcs_;    // by name
  std::map<std::string, Loaded> steps_;  // by name
  std::set<std::string> names_;        // every plugin name loaded, any kind
  std::vector<Outcome> outcomes_;
};

// Host for plugins: runs their processes on the loop through core/loop.
class ProcessHost : public Host {
 public:
  explicit ProcessHost(uv_loop_t* loop);
  ~ProcessHost() override;  // kills what still runs
  ProcessHost(const ProcessHost&) = delete;  // owns processes
  ProcessHost& operator=(const ProcessHost&) = delete;

  std::shared_ptr<Running> run(ProcessSpec spec, std::function<void(ProcessResult)> done) override;
  std::shared_ptr<Running> stream(ProcessSpec spec, std::function<void(std::string_view)> on_out,
                                  std::function<void(ProcessResult)> done) override;
  void log(LogLevel level, std::string_view message) override;
  void post(std::function<void()> fn) override;

  size_t running() const { return active_.size(); }

 private:
  class Child;
  std::shared_ptr<Running> start(ProcessSpec spec, std::function<void(std::string_view)> on_out,
                                 std::function<void(ProcessResult)> done);

  uv_loop_t* loop_;
  std::set<std::shared_ptr<Child>> active_;
  std::unique_ptr<loop::Timer> posted_timer_;
  std::vector<std::function<void()>> posted_;
};

}  // namespace pefnos::plugin
