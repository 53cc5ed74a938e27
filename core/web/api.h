// Private to the web room: the read side of /api/v1 (listings that page and
// filter, single rows, the console grid) as queries to run on a database
// thread, and the JSON helpers the room shares. Every SQL read of the API is
// in api.cpp; nothing here touches the loop.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "core/builds/builds.h"
#include "core/http/http.h"

namespace pefnos::web::api {

using nlohmann::json;

constexpr long long kMaxPage = 200;
constexpr long long kMaxLogRange = 1 << 20;  // bytes per log read

std::string dump(const json& j);
http::Response error(int status, const std::string& message);
// A non-negative integer from a path segment or a query value.
std::optional<long long> number(const std::string& text);
// A row as a JSON object: integers, booleans and json(b) keep their types,
// timestamps become ISO 8601 in UTC (the API's transactions run in UTC).
json rowJson(const pqxx::row& row);
json rowsJson(const pqxx::result& rows);

using Query = std::function<http::Response(pqxx::work&)>;

// What this master alone knows, captured on the loop for a query to use.
struct Live {
  std::vector<builds::WorkerInfo> workers;
};

// What a GET under /api/v1/<path...> asks for: a query to run, or an answer
// now (400 for a malformed filter, 404 for an unknown path).
struct Read {
  std::optional<http::Response> now;
  Query query;
};
Read route(const std::vector<std::string>& path, const http::Request& request, Live live);

}  // namespace pefnos::web::api
