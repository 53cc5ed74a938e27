#include "outcome.h"

#include <regex>
#include <set>

namespace pefnos::steps {

bool succeeded(const CommandOutcome& o) {
  return !o.not_started && !o.timed_out && !o.output_limited && o.signal == 0 && o.exit_code == 0;
}

std::string label(const StepCommand& command) {
  if (command.unpack_source) return "unpacking the source";
  constexpr size_t kLongest = 60;
  std::string text;
  for (const auto& arg : command.argv) {
    if (!text.empty()) text += ' ';
    text += arg;
    if (text.size() > kLongest) return text.substr(0, kLongest) + "...";
  }
  return text;
}

std::string describe(const StepCommand& command, const CommandOutcome& o) {
  std::string what = label(command);
  // The worker's reason first: a command that never started has no exit code.
  if (o.not_started) return what + " did not start" + (o.message.empty() ? "" : ": " + o.message);
  if (o.timed_out)
    return what + " timed out after " + std::to_string(command.timeout_seconds) + " s";
  if (o.output_limited) {
    return what + " printed more than " + std::to_string(command.max_output) + " bytes";
  }
  if (o.signal != 0) return what + " was killed by signal " + std::to_string(o.signal);
  std::string text = what + " exited with " + std::to_string(o.exit_code);
  if (o.exit_code != 0 && !o.message.empty()) text += ": " + o.message;
  return text;
}

size_t countCompilerWarnings(const std::vector<std::string>& collected) {
  static const std::regex warning(kCompilerWarningRegex, std::regex::ECMAScript);
  std::set<std::string> distinct;
  for (const auto& line : collected) {
    if (std::regex_search(line, warning)) distinct.insert(line);
  }
  return distinct.size();
}

StepResult result(StepState state, const nlohmann::json& summary, std::string message) {
  return StepResult{.state = state, .summary_json = summary.dump(), .message = std::move(message)};
}

}  // namespace pefnos::steps
