// Private to the web room: what the API pushes to clients as it happens.
//
// EventHub  GET /api/v1/events, Server-Sent Events. One subscription to the
//           master's NOTIFY channels, fanned out to every client: a NOTIFY
//           costs at most one query (coalesced while one runs), never one
//           per client. Bounded: at most max_clients (503 beyond), and a
//           client whose unsent bytes pass max_queued_bytes is dropped (it
//           reconnects and catches up from the API).
// LogTail   GET /api/v1/steps/ID/log?follow=1: the step's output from an
//           offset, then new chunks as they are stored, until the step ends.
//           One query per tick for every followed step together; a slow
//           reader is skipped (it falls behind) instead of buffered.
#pragma once

#include <uv.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/db/db.h"
#include "core/http/http.h"
#include "core/loop/loop.h"

namespace pefnos::web {

class EventHub {
 public:
  struct Options {
    size_t max_clients = 1000;
    size_t max_queued_bytes = 256 * 1024;
    int heartbeat_ms = 15000;
  };
  EventHub(uv_loop_t* loop, db::Database& db, Options options);
  ~EventHub();
  EventHub(const EventHub&) = delete;  // clients hold callbacks into it
  EventHub& operator=(const EventHub&) = delete;

  // Subscribes to the channels whose NOTIFYs become events.
  void start(db::Listener& listener);
  void serve(const http::Request& request, http::Responder out);
  size_t clients();
  uint64_t dropped() const { return dropped_; }
  uint64_t published() const { return serial_; }
  // Runs on every pefnos_build NOTIFY (the log tail wakes on it).
  void onBuild(std::function<void()> fn) { on_build_ = std::move(fn); }

 private:
  struct Client {
    http::Stream stream;
    bool gone = false;
  };
  // NOTIFYs of one kind waiting for the query that turns them into events.
  struct Feed {
    std::set<long long> ids;
    bool waiting = false;  // something arrived (ids may be empty: the queue)
    bool running = false;
  };
  void publish(const std::string& type, const nlohmann::json& data);
  void broadcast(const std::string& text);
  void compact();
  void run(Feed& feed, const std::string& type);

  uv_loop_t* loop_;
  db::Database& db_;
  Options options_;
  std::vector<std::shared_ptr<Client>> clients_;
  size_t gone_ = 0;
  uint64_t serial_ = 0, dropped_ = 0;
  Feed builds_, commands_, queue_;
  loop::Timer heartbeat_;
  std::function<void()> on_build_;
  bool lost_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

class LogTail {
 public:
  struct Options {
    size_t max_followers = 256;
    size_t max_queued_bytes = 1 << 20;
    int tick_ms = 250;
  };
  LogTail(uv_loop_t* loop, db::Database& db, Options options);
  ~LogTail();
  LogTail(const LogTail&) = delete;  // followers hold callbacks into it
  LogTail& operator=(const LogTail&) = delete;

  // Answers 404 (no step), 416 (offset beyond the end) or a stream.
  void follow(long long step, long long offset, http::Responder out);
  void wake();  // something may have changed: look now
  size_t followers() const { return followers_.size(); }

 private:
  struct Follower {
    long long step;
    int last_seq;       // the last chunk sent
    long long skip;     // bytes of the next chunk already had (an offset inside it)
    http::Stream stream;
    bool gone = false;
  };
  void tick();

  uv_loop_t* loop_;
  db::Database& db_;
  Options options_;
  std::vector<std::shared_ptr<Follower>> followers_;
  size_t starting_ = 0;  // follows whose first query runs
  bool ticking_ = false, again_ = false;
  loop::Timer timer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pefnos::web
