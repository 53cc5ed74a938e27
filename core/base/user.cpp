#include "core/base/user.h"

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace pefnos {
namespace {

namespace fs = std::filesystem;

struct Account {
  uid_t uid;
  gid_t gid;
  std::string name, home;
};

Result<Account> lookUp(const std::string& user) {
  const passwd* pw = getpwnam(user.c_str());
  if (pw == nullptr) return Error{"there is no user '" + user + "' to run as"};
  return Account{pw->pw_uid, pw->pw_gid, pw->pw_name, pw->pw_dir ? pw->pw_dir : "/"};
}

std::string errnoText(int e) { return std::strerror(e); }

Status chownOne(const fs::path& p, const Account& a) {
  if (lchown(p.c_str(), a.uid, a.gid) != 0) {
    return Error{"cannot give " + p.string() + " to user " + a.name + ": " + errnoText(errno)};
  }
  return ok();
}

}  // namespace

Status giveToUser(const std::string& user, const std::vector<fs::path>& make_dirs,
                  const std::vector<fs::path>& paths) {
  auto account = lookUp(user);
  if (!account) return account.error();
  for (const auto& dir : make_dirs) {
    std::error_code ec;
    if (fs::create_directories(dir, ec); ec) return Error{"cannot create " + dir.string() + ": " + ec.message()};
  }
  for (const auto& top : paths) {
    struct stat st {};
    if (lstat(top.c_str(), &st) != 0) {
      if (errno == ENOENT) continue;
      return Error{"cannot stat " + top.string() + ": " + errnoText(errno)};
    }
    if (st.st_uid == account->uid) continue;  // given before (a later run)
    if (auto s = chownOne(top, *account); !s) return s;
    if (!S_ISDIR(st.st_mode)) continue;
    // Left by a run that stayed root: all of it, links themselves, not their targets.
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(top, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      if (auto s = chownOne(it->path(), *account); !s) return s;
    }
    if (ec) return Error{"cannot give " + top.string() + " to user " + user + ": " + ec.message()};
  }
  return ok();
}

Status becomeUser(const std::string& user) {
  auto a = lookUp(user);
  if (!a) return a.error();
  if (a->uid == 0) return Error{"the user to run as is root itself ('" + user + "')"};
  if (initgroups(a->name.c_str(), a->gid) != 0) return Error{"cannot take the groups of " + user + ": " + errnoText(errno)};
  if (setresgid(a->gid, a->gid, a->gid) != 0) return Error{"cannot become group " + std::to_string(a->gid) + ": " + errnoText(errno)};
  if (setresuid(a->uid, a->uid, a->uid) != 0) return Error{"cannot become user " + user + ": " + errnoText(errno)};
  if (setuid(0) == 0 || seteuid(0) == 0) return Error{"root could be regained after becoming " + user + "; refusing to go on"};
  setenv("HOME", a->home.c_str(), 1);
  setenv("USER", a->name.c_str(), 1);
  setenv("LOGNAME", a->name.c_str(), 1);
  return ok();
}

}  // namespace pefnos
