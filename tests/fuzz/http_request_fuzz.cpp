// HTTP request handling (core/http): a client's raw bytes through the very
// parser and limits a connection uses (http::readRequests), then what
// handlers do with a request (query parameters, safe paths below a prefix).
// Contracts: the cut of the bytes into reads never changes the requests or
// the refusal; limits hold (header block, body); a path is decoded once and
// never holds a NUL; safeRelativePath never lets a name climb out or go absolute.
#include <optional>
#include <string>

#include "core/http/http.h"
#include "fuzz.h"

using namespace pefnos;
using pefnos::fuzz::asText;

namespace {

bool sameRequests(const http::ReadRequests& a, const http::ReadRequests& b) {
  if (a.refused != b.refused || a.incomplete != b.incomplete || a.requests.size() != b.requests.size())
    return false;
  for (size_t i = 0; i < a.requests.size(); ++i) {
    const auto &x = a.requests[i], &y = b.requests[i];
    if (x.method != y.method || x.path != y.path || x.query != y.query || x.headers != y.headers ||
        x.body != y.body)
      return false;
  }
  return true;
}

void checkSafePath(const std::string& path) {
  auto safe = http::safeRelativePath(path);
  if (!safe) return;
  FUZZ_CHECK(!safe->empty() && safe->front() != '/' && safe->back() != '/');
  for (size_t start = 0; start <= safe->size();) {
    size_t end = safe->find('/', start);
    if (end == std::string::npos) end = safe->size();
    std::string part = safe->substr(start, end - start);
    FUZZ_CHECK(!part.empty() && part != "." && part != "..");
    start = end + 1;
  }
  for (unsigned char c : *safe) FUZZ_CHECK(c >= 0x20 && c != 0x7f && c != '\\');
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input = asText(data, size);
  http::Options limits;
  limits.max_header_bytes = 2048;  // small, so that inputs of a few KiB reach them
  limits.max_body_bytes = 1024;

  auto whole = http::readRequests({input}, limits);
  auto cut = http::readRequests(fuzz::chunks(input), limits);
  FUZZ_CHECK(sameRequests(whole, cut));
  FUZZ_CHECK(whole.refused == 0 || whole.refused == 400 || whole.refused == 413 ||
             whole.refused == 431);

  for (const auto& r : whole.requests) {
    FUZZ_CHECK(!r.method.empty());
    FUZZ_CHECK(r.path.find('\0') == std::string::npos);
    // "*" (OPTIONS *) is passed on as it came, with anything after it
    // ("*x"): no route matches a path that does not start with '/'.
    FUZZ_CHECK((!r.path.empty() && (r.path.front() == '/' || r.path.front() == '*')) ||
               r.method == "CONNECT");
    FUZZ_CHECK(r.body.size() <= limits.max_body_bytes);
    for (const auto& [name, value] : r.headers) {
      for (char c : name) FUZZ_CHECK(!(c >= 'A' && c <= 'Z'));
      // Repeats are joined with a separator each: at most 2 bytes per header over the limit.
      FUZZ_CHECK(name.size() + value.size() <= 3 * limits.max_header_bytes);
    }
    for (const char* name : {"since", "limit", "q", ""}) {
      if (auto v = r.queryParamIf(name)) FUZZ_CHECK(v->size() <= r.query.size());
    }
    if (r.path.size() > 1) checkSafePath(r.path.substr(1));
  }

  checkSafePath(std::string(input));
  if (auto decoded = http::percentDecode(std::string(input), true)) {
    FUZZ_CHECK(decoded->size() <= input.size());
  }
  return 0;
}
