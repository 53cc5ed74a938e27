// Configuration import (core/config): the document's reading and validation,
// the part of `pefnos config import` that runs before the database is
// touched (checkDocument, stage 1 of importConfig). The input is the file's
// text, parsed as importFile parses it (parseJson). Contracts: no exception escapes (a
// mistyped value is an error line, never a json::type_error); every error is
// "JSON-pointer: message" with a pointer that starts at the root; the
// verdict is deterministic.
#include <nlohmann/json.hpp>

#include "core/base/json_text.h"
#include "core/base/utf8.h"
#include "core/config/config.h"
#include "fuzz.h"

using namespace pefnos;
using json = nlohmann::json;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = parseJson(fuzz::asText(data, size));
  if (!parsed) {
    // importFile reports why; the reason never quotes the file's bytes, so it
    // is UTF-8 whatever they are (it goes to a log and a database).
    const std::string& why = parsed.error().message;
    for (size_t at = 0; at < why.size(); at += decodeUtf8(why, at).length) FUZZ_CHECK(decodeUtf8(why, at).valid);
    return 0;
  }
  const json& doc = parsed.value();
  std::vector<std::string> errors = config::checkDocument(doc);
  for (const auto& e : errors) {
    FUZZ_CHECK(!e.empty() && e[0] == '/');
    FUZZ_CHECK(e.find(": ") != std::string::npos);
  }
  FUZZ_CHECK(config::checkDocument(doc) == errors);
  // What is not an object at the top is refused.
  if (!doc.is_object()) FUZZ_CHECK(!errors.empty());
  // Unknown fields are always reported: the document with one more is refused.
  if (doc.is_object() && !doc.contains("fuzz-unknown")) {
    json more = doc;
    more["fuzz-unknown"] = 1;
    FUZZ_CHECK(config::checkDocument(more).size() == errors.size() + 1);
  }
  return 0;
}
