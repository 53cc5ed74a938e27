// Pure logic of the embedded cluster: paths and connection strings.
#include <gtest/gtest.h>
#include <stdlib.h>

#include "core/cluster/cluster.h"

namespace pefnos::cluster {
namespace {

TEST(ClusterLayout, LivesUnderTheHome) {
  Layout l = layoutFor("/srv/pefnos/");
  EXPECT_EQ(l.home, "/srv/pefnos");
  EXPECT_EQ(l.data, "/srv/pefnos/pg");
  EXPECT_EQ(l.run, "/srv/pefnos/run");
  EXPECT_EQ(l.log, "/srv/pefnos/pg.log");
}

TEST(ClusterConninfo, PlainValuesStayPlain) {
  EXPECT_EQ(conninfo(layoutFor("/srv/p")), "host=/srv/p/run port=5432 dbname=pefnos user=pefnos");
}

TEST(ClusterConninfo, QuotesSpacesQuotesAndBackslashes) {
  EXPECT_EQ(quoteConninfoValue("a b"), "'a b'");
  EXPECT_EQ(quoteConninfoValue("it's"), "'it\\'s'");
  EXPECT_EQ(quoteConninfoValue("c:\\x"), "'c:\\\\x'");
  EXPECT_EQ(quoteConninfoValue(""), "''");
  EXPECT_EQ(quoteConninfoValue("k=v"), "'k=v'");
}

TEST(ClusterHome, EnvironmentWins) {
  setenv("PEFNOS_HOME", "/opt/ci-home", 1);
  EXPECT_EQ(defaultHome(), "/opt/ci-home");
  unsetenv("PEFNOS_HOME");
  EXPECT_NE(defaultHome(), "/opt/ci-home");
}

TEST(ClusterOpen, RefusesAHomeTooLongForASocket) {
  auto c = Cluster::open("/tmp/" + std::string(120, 'x'), Options{});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("too long a path for a Unix socket"), std::string::npos);
}

}  // namespace
}  // namespace pefnos::cluster
