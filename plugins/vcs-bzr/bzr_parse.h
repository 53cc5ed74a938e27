// Pure logic of the bzr plugin, header-only so that its tests include it
// directly: what a branch name, a revision id, a ref prefix and a stream's ref
// may be, how a location is recognised as local, how a branch's last-revision
// file reads, and how the helper's marks read.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pefnos::bzr {

inline bool hasControlCharacter(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

// A branch is a path relative to the location: "trunk", "feature/x",
// "ünïcode/ブランチ". Nothing that could leave the location, be read as an
// option, or address Breezy's control directory.
inline bool isValidBranchName(std::string_view name) {
  if (name.empty() || name.size() > 1024 || name.front() == '-' || name.front() == '/' ||
      name.back() == '/' || hasControlCharacter(name) || name.find('\\') != std::string_view::npos)
    return false;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view part = name.substr(start, end - start);
    if (part.empty() || part == "." || part == ".." || part == ".bzr" || part.front() == '-')
      return false;
    start = end + 1;
  }
  return true;
}

// Breezy's revision ids ("joe@example.org-20240102030405-abcdef0123456789",
// git-mapped "git-v1:<sha>") are printable and have no spaces; "null:" names
// no revision at all.
inline bool isValidRevisionId(std::string_view id) {
  if (id.empty() || id.size() > 1024 || id.front() == '-' || id == "null:") return false;
  for (unsigned char c : id)
    if (c <= 0x20 || c == 0x7f) return false;
  return true;
}

// The ref a fast-import stream writes to ("refs/heads/master"): a git ref
// name that fits on a stream's command line (no spaces, no controls).
inline bool isValidStreamRef(std::string_view ref) {
  if (ref.size() < 6 || ref.size() > 1024 || ref.substr(0, 5) != "refs/" || ref.back() == '/' ||
      ref.back() == '.' || ref.find("..") != std::string_view::npos ||
      ref.find("//") != std::string_view::npos || ref.find("@{") != std::string_view::npos)
    return false;
  for (unsigned char c : ref)
    if (c <= 0x20 || c == 0x7f ||
        std::string_view("~^:?*[\\").find(static_cast<char>(c)) != std::string_view::npos)
      return false;
  return true;
}

// "refs/pefnos/7/": relative, ends with "/", components a branch name may have.
inline bool isValidRefPrefix(std::string_view prefix) {
  if (prefix.size() < 2 || prefix.back() != '/') return false;
  return isValidBranchName(prefix.substr(0, prefix.size() - 1));
}

// The local path of a location that is one ("/srv/bzr/x", "file:///srv/bzr/x"
// with %XX escapes decoded); nullopt for any other URL (http, bzr+ssh, ...).
inline std::optional<std::string> localPath(std::string_view location) {
  if (!location.empty() && location.front() == '/') return std::string(location);
  constexpr std::string_view scheme = "file://";
  if (location.substr(0, scheme.size()) != scheme) return std::nullopt;
  std::string_view rest = location.substr(scheme.size());
  if (rest.substr(0, 9) == "localhost") rest.remove_prefix(9);
  if (rest.empty() || rest.front() != '/') return std::nullopt;
  std::string path;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] != '%') {
      path += rest[i];
      continue;
    }
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (i + 2 >= rest.size()) return std::nullopt;  // a truncated escape
    int hi = hex(rest[i + 1]), lo = hex(rest[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    char decoded = static_cast<char>(hi * 16 + lo);
    if (decoded == '\0') return std::nullopt;
    path += decoded;
    i += 2;
  }
  return path;
}

// Branch formats 6, 7 and 8 keep "revno revid" in .bzr/branch/last-revision;
// older ones (a revision-history file) and references are left to Breezy.
inline bool hasLastRevisionFile(std::string_view format) {
  for (std::string_view known : {"Bazaar Branch Format 6 ", "Bazaar Branch Format 7 ",
                                  "Bazaar Branch Format 8 "})
    if (format.substr(0, known.size()) == known) return true;
  return false;
}

// "3 joe@example.org-2024…\n" -> the revision id; "0 null:" -> "" (an empty
// branch); nullopt if the text is not of that shape.
inline std::optional<std::string> parseLastRevision(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
  size_t space = text.find(' ');
  if (space == 0 || space == std::string_view::npos) return std::nullopt;
  for (char c : text.substr(0, space))
    if (c < '0' || c > '9') return std::nullopt;
  std::string_view id = text.substr(space + 1);
  if (id == "null:") return std::string();
  if (!isValidRevisionId(id)) return std::nullopt;
  return std::string(id);
}

// The marks the helper prints after an import, ":MARK REVID" a line, in
// order; nullopt if any line is not of that shape.
inline std::optional<std::vector<std::pair<uint64_t, std::string>>> parseMarks(
    std::string_view text) {
  std::vector<std::pair<uint64_t, std::string>> marks;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    if (nl == std::string_view::npos) return std::nullopt;  // a cut-off line
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    size_t space = line.find(' ');
    if (line.size() < 2 || line.front() != ':' || space == std::string_view::npos || space < 2 ||
        space > 21)
      return std::nullopt;
    uint64_t mark = 0;
    for (char c : line.substr(1, space - 1)) {
      if (c < '0' || c > '9') return std::nullopt;
      uint64_t next = mark * 10 + static_cast<uint64_t>(c - '0');
      if (next / 10 != mark) return std::nullopt;  // overflow
      mark = next;
    }
    std::string_view revision = line.substr(space + 1);
    if (mark == 0 || !isValidRevisionId(revision)) return std::nullopt;
    marks.emplace_back(mark, std::string(revision));
  }
  return marks;
}

}  // namespace pefnos::bzr
