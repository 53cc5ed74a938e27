// What differs between two trees, read from the tar streams of exportTree.
//
// Verification compares tree digests first (one id per revision and side);
// only when they differ are both trees exported and listed here, so that the
// failure names the paths. Pure logic over the bytes of a tar stream (ustar,
// GNU long names, pax path and linkpath records); directories are ignored,
// as git cannot hold an empty one.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/result.h"

namespace pefnos::mirror {

class TarIndex {
 public:
  struct Entry {
    char kind = 'f';  // 'f' file, 'x' executable file, 'l' symlink, 'h' hard link
    std::string digest;  // SHA-256 of the content (or of the link target)
    bool operator==(const Entry&) const = default;
  };

  TarIndex();
  ~TarIndex();
  TarIndex(const TarIndex&) = delete;
  TarIndex& operator=(const TarIndex&) = delete;

  Status feed(std::string_view chunk);
  Status finish();
  const std::map<std::string, Entry>& entries() const { return entries_; }

  static constexpr size_t kMaxEntries = 1 << 20;

 private:
  Status header();
  void endEntry();

  std::string block_;                // a header (or a metadata record) being read
  enum class State { header, content, skip, meta } state_ = State::header;
  uint64_t left_ = 0;                // content bytes still to read
  uint64_t pad_ = 0;                 // padding to the next 512-byte block
  std::string path_, link_;          // of the entry being read
  char kind_ = 'f';
  char meta_type_ = 0;               // 'x', 'g', 'L', 'K' while reading a record
  std::string meta_;
  std::string pax_path_, pax_link_, long_name_, long_link_;
  EVP_MD_CTX* sha_ = nullptr;
  bool ended_ = false;               // two zero blocks seen
  std::map<std::string, Entry> entries_;
};

struct PathDifference {
  std::string path;
  std::string source;  // "file sha256:…", "executable …", "symlink …", or "missing"
  std::string target;
};

// At most max differences, sorted by path.
std::vector<PathDifference> diffTrees(const TarIndex& source, const TarIndex& target, size_t max = 100);

}  // namespace pefnos::mirror
