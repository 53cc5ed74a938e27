// Private to the web room: the status page's files, compiled into the binary
// from core/web/assets/ (see embed_assets.cmake). Names are flat: no
// directories, so no name can reach outside the set.
#pragma once

#include <string_view>

namespace pefnos::web {

struct Asset {
  std::string_view name, content_type, body;
};

// nullptr when there is no such asset.
const Asset* findAsset(std::string_view name);

}  // namespace pefnos::web
