#include "parameters.h"

#include <cmath>
#include <regex>

namespace pefnos::steps {

Parameters::Parameters(std::string type, const std::string& params_json) : type_(std::move(type)) {
  object_ = nlohmann::json::parse(params_json, nullptr, /*allow_exceptions=*/false);
  if (!object_.is_object()) {
    object_ = nlohmann::json::object();
    fail("the parameters are not a JSON object");
  }
  take("type");
  if (const auto* v = take("name"); v && !v->is_string()) refuse("name", "must be a string");
}

bool Parameters::has(const std::string& key) const { return object_.contains(key); }

const nlohmann::json* Parameters::take(const std::string& key) {
  asked_.insert(key);
  auto it = object_.find(key);
  return it == object_.end() ? nullptr : &*it;
}

void Parameters::fail(std::string message) {
  if (!error_) error_ = Error{type_ + ": " + std::move(message)};
}

void Parameters::refuse(const std::string& key, const std::string& why) {
  fail("'" + key + "' " + why);
}

std::string Parameters::text(const std::string& key, std::string fallback) {
  const auto* v = take(key);
  if (!v) return fallback;
  if (!v->is_string()) {
    refuse(key, "must be a string");
    return fallback;
  }
  return v->get<std::string>();
}

std::vector<std::string> Parameters::texts(const std::string& key,
                                           std::vector<std::string> fallback, bool non_empty) {
  const auto* v = take(key);
  if (!v) return fallback;
  const char* want =
      non_empty ? "must be a non-empty array of strings" : "must be an array of strings";
  if (!v->is_array() || (non_empty && v->empty())) {
    refuse(key, want);
    return fallback;
  }
  std::vector<std::string> values;
  for (const auto& item : *v) {
    if (!item.is_string()) {
      refuse(key, want);
      return fallback;
    }
    values.push_back(item.get<std::string>());
  }
  return values;
}

bool Parameters::flag(const std::string& key, bool fallback) {
  const auto* v = take(key);
  if (!v) return fallback;
  if (!v->is_boolean()) {
    refuse(key, "must be true or false");
    return fallback;
  }
  return v->get<bool>();
}

long long Parameters::positive(const std::string& key, long long fallback, long long most) {
  const auto* v = take(key);
  if (!v) return fallback;
  // 4.0 is what some JSON writers make of 4; 4.5 is no integer.
  if (v->is_number()) {
    double d = v->get<double>();
    if (d == std::floor(d) && d >= 1 && d <= static_cast<double>(most)) {
      return static_cast<long long>(d);
    }
  }
  bool bounded = most < std::numeric_limits<int>::max();
  refuse(key, "must be a positive integer" +
                  (bounded ? " (at most " + std::to_string(most) + ")" : std::string()));
  return fallback;
}

std::string Parameters::relativePath(const std::string& key, std::string fallback) {
  const auto* v = take(key);
  if (!v) return fallback;
  if (!v->is_string()) {
    refuse(key, "must be a string");
    return fallback;
  }
  auto path = v->get<std::string>();
  if (!isInsideBuildDirectory(path)) {
    refuse(key, "must be a path inside the build directory (relative, without \"..\"): \"" + path +
                    "\"");
    return fallback;
  }
  return path;
}

std::vector<std::string> Parameters::environment(const std::string& key) {
  const auto* v = take(key);
  if (!v) return {};
  if (!v->is_object()) {
    refuse(key, "must be an object of strings");
    return {};
  }
  std::vector<std::string> entries;
  for (const auto& [name, value] : v->items()) {
    if (!isEnvironmentName(name)) {
      refuse(key, "has \"" + name + "\", which is not an environment variable name");
      return {};
    }
    if (!value.is_string()) {
      refuse(key, "must be an object of strings (\"" + name + "\" is not a string)");
      return {};
    }
    entries.push_back(name + "=" + value.get<std::string>());
  }
  return entries;
}

std::string Parameters::regex(const std::string& key) {
  auto pattern = text(key);
  if (pattern.empty()) return pattern;
  try {
    std::regex compiled(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    refuse(key, "is not a valid regular expression: " + std::string(e.what()));
    return {};
  }
  return pattern;
}

int Parameters::jobs(const std::string& properties_json) {
  if (has("jobs")) return static_cast<int>(positive("jobs", 1, 1024));
  asked_.insert("jobs");
  auto properties = nlohmann::json::parse(properties_json, nullptr, false);
  if (!properties.is_object() || !properties.contains("jobs")) return 1;
  const auto& v = properties["jobs"];
  // A property set from a form may be text: "4".
  long long n = 0;
  if (v.is_number_integer()) {
    n = v.get<long long>();
  } else if (v.is_string()) {
    const auto& s = v.get_ref<const std::string&>();
    if (!s.empty() && s.size() < 6 && s.find_first_not_of("0123456789") == std::string::npos) {
      n = std::stoll(s);
    }
  }
  if (n < 1 || n > 1024) {
    fail("the build property 'jobs' must be a positive integer (at most 1024): " + v.dump());
    return 1;
  }
  return static_cast<int>(n);
}

Status Parameters::finish() const {
  if (error_) return *error_;
  for (const auto& [key, value] : object_.items()) {
    if (asked_.count(key)) continue;
    std::string known;
    for (const auto& k : asked_) {
      if (k == "type") continue;
      known += (known.empty() ? "" : ", ") + k;
    }
    return Error{type_ + ": unknown parameter '" + key + "' (known: " + known + ")"};
  }
  return ok();
}

bool isEnvironmentName(std::string_view name) {
  auto letter = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; };
  if (name.empty() || !letter(name[0])) return false;
  for (char c : name) {
    if (!letter(c) && !(c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool isInsideBuildDirectory(std::string_view path) {
  if (path.find('\0') != std::string_view::npos) return false;
  if (!path.empty() && path.front() == '/') return false;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    if (path.substr(start, end - start) == "..") return false;
    start = end + 1;
  }
  return true;
}

}  // namespace pefnos::steps
