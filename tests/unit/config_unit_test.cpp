// The shape of a configuration document, checked without a database.
#include <gtest/gtest.h>

#include "core/config/config.h"

namespace pefnos::config {
namespace {

using json = nlohmann::json;
using Lines = std::vector<std::string>;

TEST(ConfigDocument, EmptyDocumentIsValid) { EXPECT_EQ(checkDocument(json::object()), Lines{}); }

TEST(ConfigDocument, DocumentMustBeAnObject) {
  EXPECT_EQ(checkDocument(json::array()), Lines{"/: expected an object, got an array"});
}

TEST(ConfigDocument, MinimalEntriesNeedOnlyTheirRequiredFields) {
  EXPECT_EQ(checkDocument(json::parse(R"({"projects": [{"name": "p", "repositories": [
      {"name": "r", "vcs": "git", "url": "/r", "branches": [{"name": "main"}]}],
      "builders": [{"name": "b"}]}], "workers": [{"name": "w"}]})")),
            Lines{});
}

TEST(ConfigDocument, MissingRequiredFieldsAreNamed) {
  EXPECT_EQ(checkDocument(json::parse(R"({"projects": [{"repositories": [{"name": "r"}]}]})")),
            (Lines{"/projects/0: missing required field \"name\"",
                   "/projects/0/repositories/0: missing required field \"vcs\"",
                   "/projects/0/repositories/0: missing required field \"url\""}));
}

TEST(ConfigDocument, UnknownKeyIsReportedWithAnEscapedPointer) {
  EXPECT_EQ(checkDocument(json::parse(R"({"workers": [{"name": "w", "a/b~c": 1}]})")),
            Lines{"/workers/0/a~1b~0c: unknown field"});
}

TEST(ConfigDocument, EveryTypeErrorIsReported) {
  EXPECT_EQ(checkDocument(json::parse(R"({"workers": [{"name": 3, "tags": [], "slots": 1e3,
      "trusted": "yes", "secret_hash": false}]})")),
            (Lines{"/workers/0/name: expected a string, got a number",
                   "/workers/0/secret_hash: expected a string or null, got a boolean",
                   "/workers/0/tags: expected an object, got an array",
                   "/workers/0/trusted: expected a boolean, got a string",
                   "/workers/0/slots: expected an integer, got a fractional number"}));
}

TEST(ConfigDocument, IntegerOutOfRangeIsReported) {
  EXPECT_EQ(checkDocument(json::parse(R"({"workers": [{"name": "w", "slots": 4294967296}]})")),
            Lines{"/workers/0/slots: integer out of range"});
}

TEST(ConfigDocument, DuplicateNamesAreReportedAtTheSecond) {
  EXPECT_EQ(checkDocument(json::parse(R"({"projects": [{"name": "p"}, {"name": "p"}]})")),
            Lines{"/projects/1/name: duplicate project \"p\" (also at /projects/0)"});
}

TEST(ConfigDocument, SameRepositoryNameInTwoProjectsIsFine) {
  EXPECT_EQ(checkDocument(json::parse(R"({"projects": [
      {"name": "a", "repositories": [{"name": "r", "vcs": "git", "url": "/a"}]},
      {"name": "b", "repositories": [{"name": "r", "vcs": "git", "url": "/b"}]}]})")),
            Lines{});
}

TEST(ConfigDocument, MalformedRepositoryReferencesAreReported) {
  EXPECT_EQ(checkDocument(json::parse(R"({"projects": [{"name": "p",
      "repositories": [{"name": "r", "vcs": "git", "url": "/r", "parent": "a/b/c"}],
      "builders": [{"name": "b", "branches": [{"repository": "/r", "branch": "main"}]}]}]})")),
            (Lines{"/projects/0/repositories/0/parent: expected \"repository\" or "
                   "\"project/repository\"",
                   "/projects/0/builders/0/branches/0/repository: expected \"repository\" or "
                   "\"project/repository\""}));
}

TEST(ConfigDocument, MirrorEndsAreCheckedFieldByField) {
  EXPECT_EQ(checkDocument(json::parse(R"({"mirrors": [{"name": "m",
      "source": {"project": "p", "repository": "r", "branch": "b", "rev": "x"}}]})")),
            (Lines{"/mirrors/0/source/rev: unknown field",
                   "/mirrors/0: missing required field \"target\""}));
}

TEST(ConfigDocument, DuplicateBuilderBranchIsReported) {
  EXPECT_EQ(checkDocument(json::parse(R"({"projects": [{"name": "p", "builders": [{"name": "b",
      "branches": [{"repository": "r", "branch": "m"}, {"repository": "p/r", "branch": "m"}]}]}]})")),
            Lines{"/projects/0/builders/0/branches/1: duplicate branch \"m\" of repository "
                  "\"p/r\" (also at /projects/0/builders/0/branches/0)"});
}

}  // namespace
}  // namespace pefnos::config
