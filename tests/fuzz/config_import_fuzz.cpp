// Configuration import (core/config): the document's reading and validation,
// the part of `pefnos config import` that runs before the database is
// touched (checkDocument, stage 1 of importConfig). The input is the file's
// text, parsed as importFile parses it. Contracts: no exception escapes (a
// mistyped value is an error line, never a json::type_error); every error is
// "JSON-pointer: message" with a pointer that starts at the root; the
// verdict is deterministic.
#include <nlohmann/json.hpp>

#include "core/config/config.h"
#include "fuzz.h"

using namespace pefnos;
using json = nlohmann::json;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  json doc;
  try {
    doc = json::parse(fuzz::asText(data, size));
  } catch (const json::exception&) {
    // importFile reports it as invalid JSON: a syntax error (parse_error), or
    // a number beyond a double (out_of_range.406, which it once let escape).
    return 0;
  }
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
