// The git plugin's pure half: what it accepts as names and revisions, and how
// it reads git's output. No processes and no I/O here, so that tests/unit can
// feed it hostile input directly.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "pefnos/result.h"
#include "pefnos/vcs.h"

namespace pefnos::git {

// The `git log --format` that parseLog reads. Every field ends with NUL, which
// no name, date or message can contain; the record starts with \x1e, which the
// (C-quoted) file lines that follow it cannot contain.
inline constexpr const char* kLogFormat =
    "%x1e%H%x00%P%x00%an <%ae>%x00%aI%x00%cn <%ce>%x00%cI%x00%B%x00";

// A full object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits. Anything
// else (abbreviations, ref names, `HEAD~1`, options) is refused where the
// interface expects a revision.
bool isObjectId(std::string_view s);

// git's check-ref-format rules for a full ref name ("refs/heads/x").
bool isValidRefName(std::string_view ref);

// A name `git check-ref-format --branch` accepts: a valid refs/heads/ name that
// starts with no '-' and is not HEAD. Branches failing this never reach argv.
bool isValidBranchName(std::string_view branch);

// A repository's namespace in the proxy: "refs/…/" with valid components.
bool isValidRefPrefix(std::string_view prefix);

struct ParsedHeads {
  std::vector<Head> heads;
  std::vector<std::string> refused;  // branch names (or lines) that failed the checks above
};

// `git ls-remote --heads` output: "<oid>\trefs/heads/<branch>\n" per head.
ParsedHeads parseHeads(std::string_view ls_remote);

// `git log --format=kLogFormat --name-only` output (without -z: file names are
// C-quoted by git when they hold control characters, quotes or backslashes).
Result<std::vector<CommitInfo>> parseLog(std::string_view log);

// Undoes git's C-style path quoting ("a\tb" with quotes); unquoted input is returned as is.
std::string unquotePath(std::string_view line);

}  // namespace pefnos::git
