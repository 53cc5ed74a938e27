#include "git_stream.h"

#include <algorithm>
#include <charconv>

#include "git_parse.h"

namespace pefnos::git {
namespace {

bool startsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

bool parseNumber(std::string_view s, uint64_t& out) {
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

// A command line quoted in an error message: short, without control characters.
std::string shown(std::string_view l) {
  std::string s(l.substr(0, 80));
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20) c = '?';
  return "'" + s + (l.size() > 80 ? "...'" : "'");
}

void keep(std::string_view l, std::string& out) {
  out.append(l);
  out.push_back('\n');
}

}  // namespace

// ---- StreamLines ------------------------------------------------------------

Status StreamLines::feed(std::string_view chunk, std::string& out, const LineHandler& line) {
  if (failed_) return Error{"the stream is already broken"};
  while (!chunk.empty()) {
    if (data_left_ > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(data_left_, chunk.size()));
      out.append(chunk.substr(0, n));
      chunk.remove_prefix(n);
      data_left_ -= n;
      continue;
    }
    size_t nl = chunk.find('\n');
    size_t have = nl == std::string_view::npos ? chunk.size() : nl;
    if (partial_.size() + have > kMaxLine) {
      failed_ = true;
      return Error{"a command line of the stream is longer than 1 MiB"};
    }
    if (nl == std::string_view::npos) {
      partial_.append(chunk);
      return ok();
    }
    Status s = ok();
    if (partial_.empty()) {
      s = dispatch(chunk.substr(0, nl), out, line);
    } else {
      partial_.append(chunk.substr(0, nl));
      std::string l = std::move(partial_);
      partial_.clear();
      s = dispatch(l, out, line);
    }
    if (!s) {
      failed_ = true;
      return s;
    }
    chunk.remove_prefix(nl + 1);
  }
  return ok();
}

Status StreamLines::dispatch(std::string_view l, std::string& out, const LineHandler& line) {
  if (auto s = line(l, out); !s) return s;
  if (!startsWith(l, "data ")) return ok();
  if (startsWith(l, "data <<")) return Error{"delimited data blocks are not supported"};
  if (!parseNumber(l.substr(5), data_left_)) return Error{"bad data length: " + shown(l)};
  return ok();
}

Status StreamLines::finish() const {
  if (failed_) return Error{"the stream is broken"};
  if (data_left_ > 0) return Error{"the stream ended inside a data block"};
  if (!partial_.empty()) return Error{"the stream ended inside a command line"};
  return ok();
}

// ---- ExportFilter -----------------------------------------------------------

Status ExportFilter::feed(std::string_view chunk, std::string& out) {
  return lines_.feed(chunk, out, [this](std::string_view l, std::string& o) { return line(l, o); });
}

Status ExportFilter::line(std::string_view l, std::string& out) {
  if (startsWith(l, "original-oid ")) {
    if (in_blob_) return ok();  // a blob's: not part of the contract
    last_original_ = l.substr(13);
  } else if (l == "blob") {
    in_blob_ = true;
  } else if (!startsWith(l, "mark ")) {
    in_blob_ = false;
    if (startsWith(l, "commit ")) {
      ++commits_;
      last_original_.clear();
      dirs_.clear();
    } else if (startsWith(l, "M ")) {
      // "M MODE DATAREF PATH"
      size_t a = l.find(' ', 2), b = a == std::string_view::npos ? a : l.find(' ', a + 1);
      if (b != std::string_view::npos) {
        std::string path = unquotePath(l.substr(b + 1));
        for (size_t slash = path.find('/'); slash != std::string::npos;
             slash = path.find('/', slash + 1))
          dirs_.insert(path.substr(0, slash));
      }
    } else if (startsWith(l, "D ")) {
      if (dirs_.count(unquotePath(l.substr(2)))) return ok();  // see the header
    }
  }
  keep(l, out);
  return ok();
}

// ---- ImportFilter -----------------------------------------------------------

ImportFilter::ImportFilter(std::string ref, std::map<uint64_t, std::string> known)
    : ref_(std::move(ref)), known_(std::move(known)) {}

Status ImportFilter::feed(std::string_view chunk, std::string& out) {
  return lines_.feed(chunk, out, [this](std::string_view l, std::string& o) { return line(l, o); });
}

Status ImportFilter::finish() const { return lines_.finish(); }

Status ImportFilter::parent(std::string_view command, std::string_view value, std::string& out) {
  uint64_t m = 0;
  if (value.empty() || value[0] != ':' || !parseNumber(value.substr(1), m) || m == 0)
    return Error{"the stream names a parent that is not a mark: " + shown(value)};
  if (auto k = known_.find(m); k != known_.end()) {
    out.append(command).append(" ").append(k->second).push_back('\n');
    return ok();
  }
  if (!new_marks_.count(m))
    return Error{"the stream names parent :" + std::to_string(m) +
                 ", which neither the stream nor the target's known marks define"};
  keep(std::string(command) + " " + std::string(value), out);
  return ok();
}

Status ImportFilter::line(std::string_view l, std::string& out) {
  bool after_commit = after_commit_;
  after_commit_ = false;
  if (startsWith(l, "mark ")) {
    uint64_t m = 0;
    if (!startsWith(l, "mark :") || !parseNumber(l.substr(6), m) || m == 0)
      return Error{"bad mark: " + shown(l)};
    if (known_.count(m) || new_marks_.count(m))
      return Error{"the stream defines mark :" + std::to_string(m) + " again"};
    new_marks_.insert(m);
    if (after_commit) commit_marks_.push_back(m);
  } else if (startsWith(l, "commit ") || startsWith(l, "reset ")) {
    std::string_view ref = l.substr(l.find(' ') + 1);
    if (ref != ref_)
      return Error{"the stream writes " + shown(ref) + ", not the mirror's ref '" + ref_ + "'"};
    after_commit_ = startsWith(l, "commit ");
  } else if (startsWith(l, "from ") || startsWith(l, "merge ")) {
    size_t space = l.find(' ');
    return parent(l.substr(0, space), l.substr(space + 1), out);
  } else if (l == "done") {
    return ok();  // the plugin ends the stream itself, after its get-mark commands
  } else if (startsWith(l, "tag ")) {
    return Error{"the stream creates a tag (" + shown(l.substr(4)) + "): tags are not mirrored"};
  } else if (startsWith(l, "feature ")) {
    if (l != "feature done" && l != "feature date-format=raw")
      return Error{"the stream asks for an unsupported fast-import feature: " + shown(l)};
  } else if (startsWith(l, "option ") || l == "checkpoint" || startsWith(l, "cat-blob ") ||
             startsWith(l, "ls ") || startsWith(l, "get-mark ") || l == "alias") {
    return Error{"the stream uses a command the mirror does not allow: " + shown(l)};
  }
  keep(l, out);
  return ok();
}

// ---- Process output ---------------------------------------------------------

Result<RevListEntry> parseRevListLine(std::string_view line) {
  // "> COMMIT TREE" or "- COMMIT TREE"
  RevListEntry e;
  size_t a = line.find(' '), b = a == std::string_view::npos ? a : line.find(' ', a + 1);
  if (a != 1 || b == std::string_view::npos)
    return Error{"git rev-list printed an unexpected line: " + shown(line)};
  e.boundary = line[0] == '-';
  e.commit = line.substr(2, b - 2);
  e.tree = line.substr(b + 1);
  if (!isObjectId(e.commit) || !isObjectId(e.tree))
    return Error{"git rev-list printed an unexpected line: " + shown(line)};
  return e;
}

Result<std::vector<std::string>> parseGetMarks(std::string_view out, size_t expected) {
  std::vector<std::string> ids;
  while (!out.empty()) {
    size_t nl = out.find('\n');
    std::string_view l = out.substr(0, nl);
    out.remove_prefix(nl == std::string_view::npos ? out.size() : nl + 1);
    if (l.empty() || startsWith(l, "progress ")) continue;
    if (!isObjectId(l)) return Error{"git fast-import printed an unexpected line: " + shown(l)};
    ids.emplace_back(l);
  }
  if (ids.size() != expected)
    return Error{"git fast-import named " + std::to_string(ids.size()) + " of the stream's " +
                 std::to_string(expected) + " commits"};
  return ids;
}

}  // namespace pefnos::git
