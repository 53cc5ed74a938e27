// Dropping root: pefnos needs it only to start the embedded cluster as its
// unprivileged server user; the daemon itself runs as an ordinary user.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "core/base/result.h"

namespace pefnos {

// Gives each path to the user (the whole tree, where its top belongs to
// someone else): what the daemon writes must be the new user's before it
// stops being root. Directories in make_dirs are made first, mode 0755.
Status giveToUser(const std::string& user, const std::vector<std::filesystem::path>& make_dirs,
                  const std::vector<std::filesystem::path>& paths);

// Becomes the user for good: its groups, gid, uid (saved ids too), and its
// HOME, USER and LOGNAME, so that git, brz and svn read its configuration,
// not root's. Refuses to go on if root could be regained. Only root may call it.
Status becomeUser(const std::string& user);

}  // namespace pefnos
