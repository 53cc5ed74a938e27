// The mirror's tar reader and tree comparison (core/mirror/tree_diff): the
// tar streams that verification lists when two trees differ. Contracts: the
// cut of the stream never changes the entries or the verdict; entries are
// normalised paths with a SHA-256 each; a tree never differs from itself,
// and differs from an empty tree in each of its paths, in order, at most max.
#include <optional>
#include <string>

#include "core/mirror/tree_diff.h"
#include "fuzz.h"

using namespace pefnos;
using pefnos::fuzz::asText;

namespace {

std::optional<std::string> index(mirror::TarIndex& t, const std::vector<std::string_view>& pieces) {
  for (auto piece : pieces)
    if (auto s = t.feed(piece); !s) return s.error().message;
  if (auto s = t.finish(); !s) return "finish: " + s.error().message;
  return std::nullopt;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input = asText(data, size);
  mirror::TarIndex whole, cut, empty;
  auto a = index(whole, {input});
  auto b = index(cut, fuzz::chunks(input));
  FUZZ_CHECK(a == b);
  FUZZ_CHECK(whole.entries() == cut.entries());
  FUZZ_CHECK(whole.entries().size() <= mirror::TarIndex::kMaxEntries);

  for (const auto& [path, e] : whole.entries()) {
    FUZZ_CHECK(!path.empty() && path.rfind("./", 0) != 0 && path.back() != '/');
    FUZZ_CHECK(e.kind == 'f' || e.kind == 'x' || e.kind == 'l' || e.kind == 'h');
    FUZZ_CHECK(e.digest.size() == 64);
  }
  FUZZ_CHECK(mirror::diffTrees(whole, cut).empty());
  for (size_t max : {size_t(2), size_t(100)}) {
    auto diff = mirror::diffTrees(whole, empty, max);
    FUZZ_CHECK(diff.size() == std::min(max, whole.entries().size()));
    for (size_t i = 0; i < diff.size(); ++i) {
      FUZZ_CHECK(diff[i].target == "missing" && diff[i].source != "missing");
      if (i > 0) FUZZ_CHECK(diff[i - 1].path < diff[i].path);
    }
    auto reverse = mirror::diffTrees(empty, whole, max);
    FUZZ_CHECK(reverse.size() == diff.size());
  }
  return 0;
}
