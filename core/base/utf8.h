// UTF-8, decoded one step at a time. PostgreSQL's text is UTF-8 only, while
// git, Bazaar and Subversion hand over whatever bytes their users wrote: the
// scheduler refuses branch names that are not UTF-8, and the mirror compares
// messages with their bad bytes replaced. Both read text through this.
#pragma once

#include <cstddef>
#include <string_view>

namespace pefnos {

struct Utf8Step {
  char32_t code = 0;   // the code point; 0 when not valid
  size_t length = 0;   // bytes taken: the character, or the maximal subpart that is not UTF-8
  bool valid = false;
};

// The character at text[at] (at < text.size()). Bytes that are not UTF-8 are
// taken as Unicode's "maximal subparts" (each one U+FFFD for a replacing
// reader, as Python's 'replace' and so Breezy do): overlongs, surrogates,
// values beyond U+10FFFF and sequences cut short are not valid.
inline Utf8Step decodeUtf8(std::string_view text, size_t at) {
  auto in = [](unsigned char b, unsigned char lo, unsigned char hi) { return b >= lo && b <= hi; };
  const auto lead = static_cast<unsigned char>(text[at]);
  if (lead < 0x80) return {lead, 1, true};
  size_t need = 0;
  unsigned char lo = 0x80, hi = 0xbf;  // the range of the second byte (Unicode's table 3-7)
  if (in(lead, 0xc2, 0xdf)) need = 1;
  else if (lead == 0xe0) need = 2, lo = 0xa0;
  else if (in(lead, 0xe1, 0xec) || in(lead, 0xee, 0xef)) need = 2;
  else if (lead == 0xed) need = 2, hi = 0x9f;
  else if (lead == 0xf0) need = 3, lo = 0x90;
  else if (in(lead, 0xf1, 0xf3)) need = 3;
  else if (lead == 0xf4) need = 3, hi = 0x8f;
  if (need == 0) return {0, 1, false};
  char32_t code = lead & (0x7f >> (need + 1));
  size_t k = 1;
  for (; k <= need && at + k < text.size(); ++k) {
    const auto b = static_cast<unsigned char>(text[at + k]);
    if (!(k == 1 ? in(b, lo, hi) : in(b, 0x80, 0xbf))) break;
    code = code << 6 | (b & 0x3f);
  }
  if (k != need + 1) return {0, k, false};
  return {code, k, true};
}

}  // namespace pefnos
