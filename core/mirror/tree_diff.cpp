#include "core/mirror/tree_diff.h"

#include <algorithm>
#include <cstring>

namespace pefnos::mirror {

namespace {

constexpr size_t kBlock = 512;
constexpr size_t kMaxMeta = 1 << 20;

std::string hex(const unsigned char* p, unsigned n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; ++i) {
    s.push_back(d[p[i] >> 4]);
    s.push_back(d[p[i] & 15]);
  }
  return s;
}

std::string field(const std::string& b, size_t off, size_t len) {
  std::string s = b.substr(off, len);
  s.resize(strnlen(s.c_str(), s.size()));
  return s;
}

bool octal(const std::string& b, size_t off, size_t len, uint64_t& out) {
  const unsigned char first = static_cast<unsigned char>(b[off]);
  out = 0;
  if (first & 0x80) {  // base-256, for sizes beyond 8 GiB
    for (size_t i = 1; i < len; ++i) out = (out << 8) | static_cast<unsigned char>(b[off + i]);
    return true;
  }
  size_t i = off, end = off + len;
  while (i < end && b[i] == ' ') ++i;
  bool any = false;
  for (; i < end && b[i] >= '0' && b[i] <= '7'; ++i) {
    out = out * 8 + static_cast<uint64_t>(b[i] - '0');
    any = true;
  }
  return any || b[off] == '\0';
}

std::string normal(std::string p) {
  while (p.rfind("./", 0) == 0) p.erase(0, 2);
  while (!p.empty() && p.back() == '/') p.pop_back();
  return p;
}

// "LEN key=value\n" records of a pax header.
void readPax(const std::string& data, std::string& path, std::string& link) {
  size_t i = 0;
  while (i < data.size()) {
    size_t sp = data.find(' ', i);
    if (sp == std::string::npos) return;
    size_t len = 0;
    for (size_t j = i; j < sp; ++j) {
      if (data[j] < '0' || data[j] > '9') return;
      len = len * 10 + static_cast<size_t>(data[j] - '0');
      if (len > data.size()) return;  // before it can wrap around
    }
    // At least "LEN \n"; i + len could wrap, and i go back to an earlier record forever.
    if (len < sp - i + 2 || len > data.size() - i) return;
    std::string rec = data.substr(sp + 1, len - (sp - i) - 2);  // without the newline
    size_t eq = rec.find('=');
    if (eq != std::string::npos) {
      if (rec.compare(0, eq, "path") == 0) path = rec.substr(eq + 1);
      if (rec.compare(0, eq, "linkpath") == 0) link = rec.substr(eq + 1);
    }
    i += len;
  }
}

}  // namespace

TarIndex::TarIndex() : sha_(EVP_MD_CTX_new()) {}
TarIndex::~TarIndex() { EVP_MD_CTX_free(sha_); }

Status TarIndex::feed(std::string_view chunk) {
  while (!chunk.empty()) {
    if (ended_) return ok();  // what follows the end marker does not matter
    switch (state_) {
      case State::header: {
        size_t n = std::min(kBlock - block_.size(), chunk.size());
        block_.append(chunk.substr(0, n));
        chunk.remove_prefix(n);
        if (block_.size() == kBlock) {
          if (auto s = header(); !s) return s;
          block_.clear();
        }
        break;
      }
      case State::content:
      case State::meta:
      case State::skip: {
        if (left_ > 0) {
          size_t n = static_cast<size_t>(std::min<uint64_t>(left_, chunk.size()));
          if (state_ == State::content) EVP_DigestUpdate(sha_, chunk.data(), n);
          if (state_ == State::meta) meta_.append(chunk.substr(0, n));
          chunk.remove_prefix(n);
          left_ -= n;
          if (left_ > 0) break;
        }
        if (pad_ > 0) {
          size_t n = static_cast<size_t>(std::min<uint64_t>(pad_, chunk.size()));
          chunk.remove_prefix(n);
          pad_ -= n;
          if (pad_ > 0) break;
        }
        endEntry();
        break;
      }
    }
  }
  return ok();
}

Status TarIndex::header() {
  if (block_.find_first_not_of('\0') == std::string::npos) {
    ended_ = true;
    return ok();
  }
  uint64_t size = 0;
  if (!octal(block_, 124, 12, size)) return Error{"tar: bad size field"};
  char type = block_[156];
  std::string name = field(block_, 0, 100);
  if (block_.compare(257, 5, "ustar") == 0) {
    std::string prefix = field(block_, 345, 155);
    if (!prefix.empty()) name = prefix + "/" + name;
  }
  left_ = size;
  pad_ = (kBlock - size % kBlock) % kBlock;
  if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
    if (size > kMaxMeta) return Error{"tar: a metadata record over 1 MiB"};
    state_ = State::meta;
    meta_type_ = type;
    meta_.clear();
  } else if (type == '0' || type == '\0' || type == '7' || type == '2' || type == '1') {
    if (entries_.size() >= kMaxEntries) return Error{"tar: more than a million entries"};
    path_ = normal(!pax_path_.empty() ? pax_path_ : !long_name_.empty() ? long_name_ : name);
    link_ = !pax_link_.empty() ? pax_link_ : !long_link_.empty() ? long_link_ : field(block_, 157, 100);
    uint64_t mode = 0;
    octal(block_, 100, 8, mode);
    kind_ = type == '2' ? 'l' : type == '1' ? 'h' : (mode & 0111) ? 'x' : 'f';
    EVP_DigestInit_ex(sha_, EVP_sha256(), nullptr);
    if (kind_ == 'l' || kind_ == 'h') EVP_DigestUpdate(sha_, link_.data(), link_.size());
    state_ = State::content;
  } else {
    state_ = State::skip;  // directories, devices: not part of a git tree
  }
  if (state_ != State::meta) pax_path_.clear(), pax_link_.clear(), long_name_.clear(), long_link_.clear();
  if (left_ == 0 && pad_ == 0) endEntry();
  return ok();
}

void TarIndex::endEntry() {
  if (state_ == State::content) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_DigestFinal_ex(sha_, md, &len);
    if (!path_.empty()) entries_[path_] = Entry{kind_, hex(md, len)};
  } else if (state_ == State::meta) {
    std::string data = std::move(meta_);
    meta_.clear();
    if (meta_type_ == 'x') readPax(data, pax_path_, pax_link_);
    if (meta_type_ == 'L') long_name_ = std::string(data.c_str());
    if (meta_type_ == 'K') long_link_ = std::string(data.c_str());
  }
  state_ = State::header;
}

Status TarIndex::finish() {
  if (state_ != State::header || !block_.empty()) return Error{"tar: the stream ended inside an entry"};
  return ok();
}

namespace {
std::string describe(const TarIndex::Entry* e) {
  if (!e) return "missing";
  const char* what = e->kind == 'x' ? "executable" : e->kind == 'l' ? "symlink" : e->kind == 'h' ? "hard link" : "file";
  return std::string(what) + " sha256:" + e->digest.substr(0, 16);
}
}  // namespace

std::vector<PathDifference> diffTrees(const TarIndex& source, const TarIndex& target, size_t max) {
  std::vector<PathDifference> out;
  const auto& a = source.entries();
  const auto& b = target.entries();
  auto i = a.begin();
  auto j = b.begin();
  while ((i != a.end() || j != b.end()) && out.size() < max) {
    if (j == b.end() || (i != a.end() && i->first < j->first)) {
      out.push_back({i->first, describe(&i->second), "missing"});
      ++i;
    } else if (i == a.end() || j->first < i->first) {
      out.push_back({j->first, "missing", describe(&j->second)});
      ++j;
    } else {
      if (!(i->second == j->second)) out.push_back({i->first, describe(&i->second), describe(&j->second)});
      ++i, ++j;
    }
  }
  return out;
}

}  // namespace pefnos::mirror
