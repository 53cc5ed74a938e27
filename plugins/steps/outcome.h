// How a command that a step planned ended, in words, and the pieces every
// step's interpret() uses. Private to plugins/steps.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pefnos/step.h"

namespace pefnos::steps {

bool succeeded(const CommandOutcome& outcome);
// How a command ended, for a step's message: "make -j4 exited with 2",
// "ctest timed out after 600 s", "make printed more than 1048576 bytes",
// "odoo was killed by signal 9", "cmake did not start: no such file".
std::string describe(const StepCommand& command, const CommandOutcome& outcome);
// argv as a person would type it, shortened when long ("unpacking the source"
// for a command that unpacks).
std::string label(const StepCommand& command);

// Lines that compilers and linkers print for a warning: "f.c:3:5: warning: …",
// "/usr/bin/ld: warning: …", "warning: …".
inline constexpr const char* kCompilerWarningRegex = "(^|: )warning: ";
// The distinct compiler warnings among collected lines (a header's warning
// repeated by every file that includes it counts once).
size_t countCompilerWarnings(const std::vector<std::string>& collected);

// A StepResult with `summary` as its JSON.
StepResult result(StepState state, const nlohmann::json& summary, std::string message);

}  // namespace pefnos::steps
