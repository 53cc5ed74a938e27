#include "git_parse.h"

#include <array>

namespace pefnos::git {
namespace {

bool isHexLower(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// One slash-separated component, as refs.c check_refname_component sees it.
bool validComponent(std::string_view c) {
  if (c.empty() || c.front() == '.') return false;
  if (c.size() >= 5 && c.substr(c.size() - 5) == ".lock") return false;
  char previous = 0;
  for (char ch : c) {
    auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f) return false;
    switch (ch) {
      case ' ':
      case ':':
      case '?':
      case '[':
      case '\\':
      case '^':
      case '~':
      case '*':
        return false;
      case '.':
        if (previous == '.') return false;  // ".."
        break;
      case '{':
        if (previous == '@') return false;  // "@{"
        break;
    }
    previous = ch;
  }
  return true;
}

}  // namespace

bool isObjectId(std::string_view s) {
  if (s.size() != 40 && s.size() != 64) return false;
  for (char c : s)
    if (!isHexLower(c)) return false;
  return true;
}

bool isValidRefName(std::string_view ref) {
  if (ref.empty() || ref == "@" || ref.back() == '.') return false;
  size_t start = 0;
  for (;;) {
    size_t slash = ref.find('/', start);
    if (!validComponent(ref.substr(start, slash - start)))
      return false;  // also: "//", leading or trailing '/'
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

bool isValidBranchName(std::string_view branch) {
  if (branch.empty() || branch.front() == '-' || branch == "HEAD") return false;
  return isValidRefName(std::string("refs/heads/").append(branch));
}

bool isValidRefPrefix(std::string_view prefix) {
  if (prefix.size() < 6 || prefix.substr(0, 5) != "refs/" || prefix.back() != '/') return false;
  return isValidRefName(std::string(prefix).append("x"));
}

ParsedHeads parseHeads(std::string_view out) {
  constexpr std::string_view kHeads = "refs/heads/";
  ParsedHeads parsed;
  while (!out.empty()) {
    size_t eol = out.find('\n');
    std::string_view line = out.substr(0, eol);
    out.remove_prefix(eol == std::string_view::npos ? out.size() : eol + 1);
    if (line.empty()) continue;
    size_t tab = line.find('\t');
    std::string_view oid = line.substr(0, tab);
    std::string_view ref = tab == std::string_view::npos ? "" : line.substr(tab + 1);
    if (!isObjectId(oid) || ref.substr(0, kHeads.size()) != kHeads) {
      parsed.refused.emplace_back(line);
      continue;
    }
    std::string_view branch = ref.substr(kHeads.size());
    if (isValidBranchName(branch)) {
      parsed.heads.push_back(Head{std::string(branch), std::string(oid)});
    } else {
      parsed.refused.emplace_back(branch);
    }
  }
  return parsed;
}

Result<std::vector<CommitInfo>> parseLog(std::string_view out) {
  std::vector<CommitInfo> commits;
  size_t pos = 0;
  while (pos < out.size()) {
    if (out[pos] != '\x1e') {
      return Error{"unexpected git log output at byte " + std::to_string(pos)};
    }
    ++pos;
    std::array<std::string_view, 7> f;  // revision, parents, author, date, committer, date, message
    for (auto& field : f) {
      size_t nul = out.find('\0', pos);
      if (nul == std::string_view::npos) return Error{"git log output ends inside a commit record"};
      field = out.substr(pos, nul - pos);
      pos = nul + 1;
    }
    if (!isObjectId(f[0]))
      return Error{"git log printed a malformed revision: " + std::string(f[0])};
    CommitInfo c;
    c.revision = f[0];
    for (size_t start = 0; start < f[1].size();) {
      size_t space = f[1].find(' ', start);
      if (space == std::string_view::npos) space = f[1].size();
      if (space > start) c.parents.emplace_back(f[1].substr(start, space - start));
      start = space + 1;
    }
    c.author = f[2];
    c.author_date = f[3];
    c.committer = f[4];
    c.committer_date = f[5];
    std::string_view message = f[6];
    while (!message.empty() && message.back() == '\n') message.remove_suffix(1);
    c.message = message;
    // The changed files: one per line up to the next record.
    size_t end = out.find('\x1e', pos);
    if (end == std::string_view::npos) end = out.size();
    std::string_view files = out.substr(pos, end - pos);
    while (!files.empty()) {
      size_t eol = files.find('\n');
      std::string_view line = files.substr(0, eol);
      files.remove_prefix(eol == std::string_view::npos ? files.size() : eol + 1);
      if (!line.empty()) c.files.push_back(unquotePath(line));
    }
    commits.push_back(std::move(c));
    pos = end;
  }
  return commits;
}

std::string unquotePath(std::string_view line) {
  if (line.size() < 2 || line.front() != '"' || line.back() != '"') return std::string(line);
  std::string_view s = line.substr(1, line.size() - 2);
  std::string path;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      path += s[i];
      continue;
    }
    char e = s[++i];
    switch (e) {
      case 'a':
        path += '\a';
        break;
      case 'b':
        path += '\b';
        break;
      case 't':
        path += '\t';
        break;
      case 'n':
        path += '\n';
        break;
      case 'v':
        path += '\v';
        break;
      case 'f':
        path += '\f';
        break;
      case 'r':
        path += '\r';
        break;
      default:
        if (e >= '0' && e <= '3' && i + 2 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7' &&
            s[i + 2] >= '0' && s[i + 2] <= '7') {
          path += static_cast<char>(((e - '0') << 6) | ((s[i + 1] - '0') << 3) | (s[i + 2] - '0'));
          i += 2;
        } else {
          path += e;  // \" and \\, and anything git does not emit, literally
        }
    }
  }
  return path;
}

}  // namespace pefnos::git
