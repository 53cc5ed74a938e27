#include "svn_parse.h"

#include <fnmatch.h>

#include <algorithm>
#include <charconv>
#include <pugixml.hpp>
#include <set>

namespace pefnos::svn {
namespace {

std::vector<std::string_view> components(std::string_view path) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    out.push_back(path.substr(start, slash == std::string_view::npos ? slash : slash - start));
    if (slash == std::string_view::npos) return out;
    start = slash + 1;
  }
}

std::string joinPath(std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(b);
  return std::string(a) + "/" + std::string(b);
}

std::optional<Revnum> parseRevnum(std::string_view s) {
  if (s.empty() || s.size() > 18) return std::nullopt;  // no overflow, no sign, no spaces
  if (!std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  Revnum n = 0;
  std::from_chars(s.data(), s.data() + s.size(), n);
  return n;
}

bool isGlob(std::string_view component) {
  return component.find_first_of("*?[\\") != std::string_view::npos;
}

bool startsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// The path relative to root ("/proj"), nullopt when it is not below it.
std::optional<std::string> relativeTo(std::string_view path, std::string_view root) {
  if (!startsWith(path, root) || path.size() <= root.size() + 1 || path[root.size()] != '/')
    return std::nullopt;
  return std::string(path.substr(root.size() + 1));
}

}  // namespace

bool isValidBranchPath(std::string_view path) {
  if (path.empty() || path[0] == '-') return false;
  for (unsigned char c : path)
    if (c < 0x20 || c == 0x7f) return false;
  for (auto c : components(path))
    if (c.empty() || c == "." || c == "..") return false;
  return true;
}

std::optional<RevisionId> parseRevisionId(std::string_view id) {
  size_t at = id.rfind('@');
  if (at == std::string_view::npos) return std::nullopt;
  auto path = id.substr(0, at);
  auto rev = parseRevnum(id.substr(at + 1));
  if (!rev || !isValidBranchPath(path)) return std::nullopt;
  return RevisionId{std::string(path), *rev};
}

std::string revisionId(std::string_view path, Revnum revision) {
  return std::string(path) + "@" + std::to_string(revision);
}

std::string encodePath(std::string_view path) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : path) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~' || c == '/') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string decodePercent(std::string_view s) {
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && digit(s[i + 1]) >= 0 && digit(s[i + 2]) >= 0) {
      out += static_cast<char>(digit(s[i + 1]) * 16 + digit(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string withoutTrailingSlash(std::string_view url) {
  while (url.size() > 1 && url.back() == '/') url.remove_suffix(1);
  return std::string(url);
}

std::string joinUrl(std::string_view base, std::string_view relative_path) {
  std::string url = withoutTrailingSlash(base);
  while (!relative_path.empty() && relative_path.front() == '/') relative_path.remove_prefix(1);
  if (relative_path.empty()) return url;
  return url + "/" + encodePath(relative_path);
}

std::optional<std::string> localPathOfUrl(std::string_view url) {
  constexpr std::string_view scheme = "file://";
  if (url.size() < scheme.size()) return std::nullopt;
  std::string lower(url.substr(0, scheme.size()));
  std::transform(lower.begin(), lower.end(), lower.begin(), [](char c) {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  });
  if (lower != scheme) return std::nullopt;
  auto rest = url.substr(scheme.size());
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto host = rest.substr(0, slash);
  if (!host.empty() && host != "localhost") return std::nullopt;
  std::string path = decodePercent(rest.substr(slash));
  if (path.find('\0') != std::string::npos) return std::nullopt;
  return path;
}

std::optional<Revnum> parseYoungest(std::string_view db_current) {
  size_t end = db_current.find_first_of(" \n");
  if (end == std::string_view::npos) return std::nullopt;  // a torn read: no newline yet
  return parseRevnum(db_current.substr(0, end));
}

Result<BranchSearch> BranchSearch::make(const std::vector<Repo::Branch>& branches) {
  BranchSearch search;
  for (const auto& b : branches) {
    if (!isValidBranchPath(b.name))
      return Error{"refusing branch " + std::string(b.pattern ? "pattern" : "name") + " '" +
                   b.name + "': not a relative path svn may see"};
    Pending p;
    for (auto c : components(b.name)) p.components.emplace_back(c);
    p.glob = b.pattern;
    search.enqueue(std::move(p));
  }
  return search;
}

void BranchSearch::enqueue(Pending p) {
  // Literal components before the last need no listing: the next listing
  // (of the deeper directory) tells whether they exist.
  while (p.components.size() > 1 && !(p.glob && isGlob(p.components.front()))) {
    p.prefix = joinPath(p.prefix, p.components.front());
    p.components.erase(p.components.begin());
  }
  pending_.push_back(std::move(p));
}

std::vector<std::string> BranchSearch::targets() const {
  std::vector<std::string> out;
  std::set<std::string> seen;
  if (first_round_ && !pending_.empty()) {
    out.emplace_back();
    seen.emplace();
  }
  for (const auto& p : pending_)
    if (seen.insert(p.prefix).second) out.push_back(p.prefix);
  return out;
}

void BranchSearch::feed(const std::vector<Listing>& listings) {
  std::map<std::string, const Listing*> by_target;
  auto names = targets();
  for (size_t i = 0; i < names.size() && i < listings.size(); ++i)
    by_target[names[i]] = &listings[i];
  auto pending = std::move(pending_);
  pending_.clear();
  first_round_ = false;
  for (auto& p : pending) {
    auto it = by_target.find(p.prefix);
    if (it == by_target.end()) continue;
    const std::string& want = p.components.front();
    bool glob = p.glob && isGlob(want);
    for (const auto& e : *it->second) {
      if (!e.directory) continue;  // only directories are branches
      if (glob ? fnmatch(want.c_str(), e.name.c_str(), 0) != 0 : e.name != want) continue;
      std::string path = joinPath(p.prefix, e.name);
      if (!isValidBranchPath(path)) {
        refused_.push_back(path);
        continue;
      }
      if (p.components.size() == 1) {
        found_[path] = e.last_changed;
      } else {
        enqueue(Pending{path, {p.components.begin() + 1, p.components.end()}, p.glob});
      }
    }
  }
}

std::vector<Head> BranchSearch::heads() const {
  std::vector<Head> out;
  for (const auto& [path, rev] : found_) out.push_back(Head{path, revisionId(path, rev)});
  return out;
}

Result<std::vector<std::vector<BranchSearch::Entry>>> parseLists(std::string_view xml) {
  pugi::xml_document doc;
  if (!doc.load_buffer(xml.data(), xml.size()))
    return Error{"svn list printed XML that does not parse"};
  auto lists = doc.child("lists");
  if (!lists) return Error{"svn list printed no <lists>"};
  std::vector<std::vector<BranchSearch::Entry>> out;
  for (auto list : lists.children("list")) {
    auto& entries = out.emplace_back();
    for (auto entry : list.children("entry")) {
      BranchSearch::Entry e;
      e.name = entry.child_value("name");
      e.directory = std::string_view(entry.attribute("kind").value()) == "dir";
      auto rev = parseRevnum(entry.child("commit").attribute("revision").value());
      if (e.name.empty() || !rev)
        return Error{"svn list printed an entry without name or revision"};
      e.last_changed = *rev;
      entries.push_back(std::move(e));
    }
  }
  return out;
}

bool onlyMissingTargets(std::string_view err) {
  bool missing = false;
  size_t start = 0;
  while (start < err.size()) {
    size_t nl = err.find('\n', start);
    auto line = err.substr(start, nl == std::string_view::npos ? nl : nl - start);
    start = nl == std::string_view::npos ? err.size() : nl + 1;
    if (!startsWith(line, "svn: E")) continue;  // warnings and blank lines
    if (!startsWith(line, "svn: E200009:")) return false;
    missing = true;
  }
  return missing;
}

Result<std::vector<LogEntry>> parseLog(std::string_view xml) {
  pugi::xml_document doc;
  if (!doc.load_buffer(xml.data(), xml.size()))
    return Error{"svn log printed XML that does not parse"};
  auto log = doc.child("log");
  if (!log) return Error{"svn log printed no <log>"};
  std::vector<LogEntry> out;
  for (auto entry : log.children("logentry")) {
    LogEntry e;
    auto rev = parseRevnum(entry.attribute("revision").value());
    if (!rev) return Error{"svn log printed an entry without a revision"};
    e.revision = *rev;
    e.author = entry.child_value("author");
    e.date = entry.child_value("date");
    e.message = entry.child_value("msg");
    for (auto path : entry.child("paths").children("path")) {
      LogPath p;
      p.path = path.child_value();
      std::string_view action = path.attribute("action").value();
      p.action = action.empty() ? 'M' : action[0];
      p.directory = std::string_view(path.attribute("kind").value()) == "dir";
      p.copyfrom_path = path.attribute("copyfrom-path").value();
      if (!p.copyfrom_path.empty()) {
        auto from = parseRevnum(path.attribute("copyfrom-rev").value());
        if (!from) return Error{"svn log printed a copy without its source revision"};
        p.copyfrom_revision = *from;
      }
      e.paths.push_back(std::move(p));
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::string isoDate(std::string_view d) {
  // YYYY-MM-DDTHH:MM:SS, then svn's fraction and Z (always UTC).
  if (d.size() < 20 || d[4] != '-' || d[7] != '-' || d[10] != 'T' || d[13] != ':' || d[16] != ':' ||
      d.back() != 'Z')
    return std::string(d);
  return std::string(d.substr(0, 19)) + "+00:00";
}

std::vector<CommitInfo> branchHistory(const std::vector<LogEntry>& log, std::string branch_path,
                                      const std::string& root,
                                      const std::vector<RevisionId>& exclude, size_t limit) {
  // First the ids, entry by entry: the branch's path moves to the copy
  // source when it (or a directory above it) was copied in that revision.
  struct Step {
    const LogEntry* entry;
    std::string id;
    std::string path;  // the branch's repository path at this revision
  };
  std::vector<Step> steps;
  for (const auto& entry : log) {
    auto relative = relativeTo(branch_path, root);
    if (!relative) break;  // history from outside the URL: not ours to name
    steps.push_back(Step{&entry, revisionId(*relative, entry.revision), branch_path});
    const LogPath* copy = nullptr;
    for (const auto& p : entry.paths) {
      if (p.copyfrom_path.empty() || (p.action != 'A' && p.action != 'R')) continue;
      if (p.path != branch_path && !startsWith(branch_path, p.path + "/")) continue;
      if (!copy || p.path.size() > copy->path.size()) copy = &p;  // the deepest copy wins
    }
    if (copy) branch_path = copy->copyfrom_path + branch_path.substr(copy->path.size());
  }

  std::vector<CommitInfo> newest_first;
  for (size_t i = 0; i < steps.size() && newest_first.size() < limit; ++i) {
    auto rel = relativeTo(steps[i].path, root);
    bool excluded = std::any_of(exclude.begin(), exclude.end(), [&](const RevisionId& x) {
      return x.path == *rel && steps[i].entry->revision <= x.revision;
    });
    if (excluded) break;
    const LogEntry& e = *steps[i].entry;
    CommitInfo c;
    c.revision = steps[i].id;
    if (i + 1 < steps.size()) c.parents.push_back(steps[i + 1].id);
    c.author = c.committer = e.author;
    c.author_date = c.committer_date = isoDate(e.date);
    c.message = e.message;
    for (const auto& p : e.paths) {
      auto file = relativeTo(p.path, steps[i].path);
      // Directories are not files; a deleted one stands for what it held.
      if (file && (!p.directory || p.action == 'D')) c.files.push_back(std::move(*file));
    }
    newest_first.push_back(std::move(c));
  }
  return {std::make_move_iterator(newest_first.rbegin()),
          std::make_move_iterator(newest_first.rend())};
}

}  // namespace pefnos::svn
