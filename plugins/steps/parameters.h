// Reading a step's JSON parameters, shared by the step plugins. Private to
// plugins/steps (compiled into each step's shared object); the host never
// sees it.
//
// A step reads each of its keys once through Parameters, then asks finish():
// the first problem found, or a key that no accessor asked for, becomes the
// step's Error ("cmake: 'jobs' must be a positive integer"). The build room
// puts the step's position in front of it.
#pragma once

#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "pefnos/result.h"

namespace pefnos::steps {

class Parameters {
 public:
  // `type` names the step in messages; "type" and "name" (a label for
  // people) are accepted for every step.
  Parameters(std::string type, const std::string& params_json);

  bool has(const std::string& key) const;

  std::string text(const std::string& key, std::string fallback = "");
  // An array of strings; `non_empty` refuses [].
  std::vector<std::string> texts(const std::string& key, std::vector<std::string> fallback = {},
                                 bool non_empty = false);
  bool flag(const std::string& key, bool fallback);
  // An integer in [1, most].
  long long positive(const std::string& key, long long fallback,
                     long long most = std::numeric_limits<int>::max());
  // A path inside the build directory: relative, without a ".." component.
  std::string relativePath(const std::string& key, std::string fallback = "");
  // An object of strings whose keys are environment names: "NAME=value" entries.
  std::vector<std::string> environment(const std::string& key);
  // An ECMAScript regular expression that std::regex accepts.
  std::string regex(const std::string& key);
  // -j for the step's commands: its "jobs", else the build property "jobs", else 1.
  int jobs(const std::string& properties_json);

  // Records a problem with `key` that the step found itself: "'key' <why>".
  void refuse(const std::string& key, const std::string& why);
  // Records a problem that concerns several keys; the first problem wins.
  void fail(std::string message);
  Status finish() const;

 private:
  // The value of a key the step asked for, or nullptr when it is absent.
  const nlohmann::json* take(const std::string& key);

  std::string type_;
  nlohmann::json object_;
  std::set<std::string> asked_;
  std::optional<Error> error_;
};

// An environment variable's name: [A-Za-z_][A-Za-z0-9_]*.
bool isEnvironmentName(std::string_view name);
// Relative (or "", the build directory itself), no ".." component, no NUL.
bool isInsideBuildDirectory(std::string_view path);

}  // namespace pefnos::steps
