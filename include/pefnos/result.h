// Part of the plugin API (stable, versioned with kPluginAbiVersion in plugin.h).
// Expected failures as values: a Result<T> holds either a T or an Error that
// says, in words a user can act on, what went wrong. Never thrown across the loop.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace pefnos {

struct Error {
  std::string message;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Error error) : v_(std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// A Result that carries no value: success or an Error.
struct Done {};
using Status = Result<Done>;
inline Status ok() { return Done{}; }

}  // namespace pefnos
