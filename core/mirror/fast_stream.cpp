#include "core/mirror/fast_stream.h"

#include <charconv>

namespace pefnos::mirror {

namespace {

bool startsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

bool parseNumber(std::string_view s, uint64_t& out) {
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

std::string shown(std::string_view l) {
  std::string s(l.substr(0, 80));
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20) c = '?';
  }
  return "'" + s + (l.size() > 80 ? "...'" : "'");
}

}  // namespace

StreamFilter::StreamFilter(uint64_t known_max, std::string ref)
    : known_max_(known_max), ref_(std::move(ref)) {}

Status StreamFilter::feed(std::string_view chunk, std::string& out) {
  if (failed_) return Error{"the stream is already broken"};
  bytes_ += chunk.size();
  while (!chunk.empty()) {
    if (data_left_ > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(data_left_, chunk.size()));
      out.append(chunk.substr(0, n));
      chunk.remove_prefix(n);
      data_left_ -= n;
      continue;
    }
    size_t nl = chunk.find('\n');
    if (nl == std::string_view::npos) {
      if (partial_.size() + chunk.size() > kMaxLine) {
        failed_ = true;
        return Error{"fast-export wrote a command line longer than 1 MiB"};
      }
      partial_.append(chunk);
      return ok();
    }
    Status s = ok();
    if (partial_.empty()) {
      s = line(chunk.substr(0, nl), out);
    } else {
      if (partial_.size() + nl > kMaxLine) {
        failed_ = true;
        return Error{"fast-export wrote a command line longer than 1 MiB"};
      }
      partial_.append(chunk.substr(0, nl));
      std::string l = std::move(partial_);
      partial_.clear();
      s = line(l, out);
    }
    if (!s) {
      failed_ = true;
      return s;
    }
    chunk.remove_prefix(nl + 1);
  }
  return ok();
}

Status StreamFilter::parentMark(std::string_view value, std::string_view what) {
  uint64_t m = 0;
  if (value.empty() || value[0] != ':' || !parseNumber(value.substr(1), m) || m == 0) {
    return Error{"fast-export named a " + std::string(what) + " parent that is not a mark: " +
                 shown(value)};
  }
  if (m <= known_max_) {
    known_parents_.insert(m);
  } else if (!commit_marks_.count(m)) {
    return Error{"fast-export named " + std::string(what) + " :" + std::to_string(m) +
                 ", a mark no earlier commit has"};
  }
  commits_.back().parents.push_back(m);
  return ok();
}

Status StreamFilter::line(std::string_view l, std::string& out) {
  if (expect_mark_) {
    expect_mark_ = false;
    uint64_t m = 0;
    if (!startsWith(l, "mark :") || !parseNumber(l.substr(6), m) || m == 0) {
      return Error{"fast-export wrote a commit without a mark (got " + shown(l) + ")"};
    }
    if (m <= known_max_ || commit_marks_.count(m)) {
      return Error{"fast-export reused mark :" + std::to_string(m)};
    }
    commits_.back().mark = m;
    commit_marks_.insert(m);
  } else if (startsWith(l, "commit ")) {
    if (l.substr(7) != ref_) {
      return Error{"fast-export wrote a commit for " + shown(l.substr(7)) + ", not " + shown(ref_)};
    }
    in_commit_ = true;
    expect_mark_ = true;
    commits_.emplace_back();
  } else if (startsWith(l, "original-oid ")) {
    if (!in_commit_ || !commits_.back().source.empty() || l.size() == 13) {
      return Error{"fast-export wrote a misplaced original-oid line"};
    }
    commits_.back().source = std::string(l.substr(13));
    return ok();  // the master's alone: the importer never sees it
  } else if (startsWith(l, "data ")) {
    if (startsWith(l, "data <<")) return Error{"delimited data blocks are not supported"};
    if (!parseNumber(l.substr(5), data_left_)) return Error{"bad data length: " + shown(l)};
  } else if (in_commit_ && startsWith(l, "from ")) {
    if (!commits_.back().parents.empty()) return Error{"a commit with two from lines"};
    if (auto s = parentMark(l.substr(5), "from"); !s) return s;
  } else if (in_commit_ && startsWith(l, "merge ")) {
    if (commits_.back().parents.empty()) return Error{"a merge line before the from line"};
    if (auto s = parentMark(l.substr(6), "merge"); !s) return s;
  } else if (startsWith(l, "blob") || startsWith(l, "reset ") || startsWith(l, "tag ") ||
             l == "done" || startsWith(l, "feature ") || startsWith(l, "progress ")) {
    in_commit_ = false;
  }
  out.append(l);
  out.push_back('\n');
  return ok();
}

Status StreamFilter::finish() {
  if (failed_) return Error{"the stream is broken"};
  if (data_left_ > 0) return Error{"fast-export ended inside a data block"};
  if (!partial_.empty()) return Error{"fast-export ended inside a command line"};
  if (expect_mark_) return Error{"fast-export ended after a commit line"};
  for (const auto& c : commits_) {
    if (c.source.empty()) {
      return Error{"fast-export wrote commit :" + std::to_string(c.mark) + " without original-oid"};
    }
  }
  return ok();
}

}  // namespace pefnos::mirror
