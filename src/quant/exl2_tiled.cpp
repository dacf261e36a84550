#include "quant/exl2_tiled.h"

#include <algorithm>

#include "core/error.h"
#include "quant/bitpack.h"

namespace lathe::quant {
namespace {

struct Plane {
  int bits = 0;    // p
  int offset = 0;  // first word inside the unit
  int shift = 0;   // the value bits it holds start here
};

// The planes of a width, low bits first (see the header).
int planes_of(int bits, Plane (&out)[2]) {
  switch (bits) {
    case 2: out[0] = {2, 0, 0}; return 1;
    case 3: out[0] = {2, 0, 0}, out[1] = {1, 64, 2}; return 2;
    case 4: out[0] = {4, 0, 0}; return 1;
    case 5: out[0] = {4, 0, 0}, out[1] = {1, 128, 4}; return 2;
    case 6: out[0] = {4, 0, 0}, out[1] = {2, 128, 4}; return 2;
    case 8: out[0] = {8, 0, 0}; return 1;
    default: fail(ErrorKind::kUnsupported, "EXL2 has no {}-bit packing (2, 3, 4, 5, 6, 8)", bits);
  }
}

// Where pair i of `lane` lives in plane p of a unit: word (from the unit start) and bit of its first value.
struct Slot {
  int64_t word;
  int bit;
};
Slot slot(const Plane& p, int lane, int i) {
  const int per_word = 16 / p.bits;
  return {p.offset + int64_t(lane) * p.bits + i / per_word, p.bits * (i % per_word)};
}

int64_t unit_words(int bits) { return int64_t(kTiledUnitRows) * bits; }

}  // namespace

Exl2Tiled exl2_tile(const ops::Exl2View& v) {
  const int64_t Np = v.padded_out(), S = Np / kTiledStripCols, G = v.num_groups;
  if (!v.q_weight || !v.q_scale || !v.groups || G <= 0 || Np <= 0)
    fail(ErrorKind::kInvalidArgument, "exl2_tile: the layer's stored tensors are missing");
  Exl2Tiled t;
  int64_t tq = 0, vrow = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int bits = v.groups[g * 4], rows = v.groups[g * 4 + 1];
    Plane pl[2];
    planes_of(bits, pl);
    for (int first = 0; first < rows; first += kTiledMaxGroupRows) {
      const int64_t part = std::min(rows - first, kTiledMaxGroupRows);
      const int64_t padded = (part + kTiledUnitRows - 1) / kTiledUnitRows * kTiledUnitRows;
      for (int64_t f : {int64_t(bits), part, tq, vrow, int64_t(v.groups[g * 4 + 3]) + first, padded, g, int64_t(0)})
        t.groups.push_back(int32_t(f));
      t.max_group_rows = std::max(t.max_group_rows, padded);
      t.max_group_qrows = std::max(t.max_group_qrows, padded * bits / 32);
      tq += padded * bits / 32;
      vrow += padded;
    }
  }
  const int64_t TG = t.num_groups();
  t.padded_rows = vrow;
  t.qrows = tq;
  t.perm.assign(size_t(vrow), -1);
  for (int64_t g = 0; g < TG; ++g) {
    const int32_t* row = &t.groups[size_t(g * 8)];
    for (int r = 0; r < row[1]; ++r) t.perm[size_t(row[3] + r)] = v.perm[row[4] + r];
  }
  t.weight.assign(size_t(tq * Np), 0u);
  t.scale.assign(size_t(TG * S * 4), 0u);

  // Tiled groups of each stored group, for finding them from the stored group.
  std::vector<int64_t> first_part(size_t(G) + 1, TG);
  for (int64_t g = TG - 1; g >= 0; --g) first_part[size_t(t.groups[size_t(g * 8 + 6)])] = g;
#pragma omp parallel
  {
    std::vector<uint8_t> codes;
#pragma omp for schedule(dynamic)
    for (int64_t sg = 0; sg < G; ++sg) {
      const int bits = v.groups[sg * 4], rows = v.groups[sg * 4 + 1];
      codes.assign(size_t(rows) * size_t(Np), 0);
      unpack_columns(v.q_weight + int64_t(v.groups[sg * 4 + 2]) * Np, rows, Np, bits, codes.data());
      Plane pl[2];
      const int np = planes_of(bits, pl);
      const uint32_t zero = 1u << (bits - 1);  // padding rows: the zero code
      for (int64_t g = first_part[size_t(sg)]; g < TG && t.groups[size_t(g * 8 + 6)] == sg; ++g) {
        const int32_t* row = &t.groups[size_t(g * 8)];
        const int64_t part = row[1], offset = row[4] - v.groups[sg * 4 + 3], units = row[5] / kTiledUnitRows;
        const auto code = [&](int64_t r, int64_t c) { return r < part ? uint32_t(codes[size_t((offset + r) * Np + c)]) : zero; };
        for (int64_t s = 0; s < S; ++s)
          for (int64_t u = 0; u < units; ++u) {
            uint32_t* unit = t.weight.data() + int64_t(row[2]) * Np + (s * units + u) * unit_words(bits);
            for (int lane = 0; lane < 32; ++lane) {
              const int gl = lane >> 2, q = lane & 3;
              for (int i = 0; i < 16; ++i) {
                const int ks = i >> 3, j = (i >> 1) & 3, h = i & 1;
                const int64_t r = u * kTiledUnitRows + 16 * ks + 8 * h + 2 * q, c = s * kTiledStripCols + 8 * j + gl;
                const uint32_t lo = code(r, c), hi = code(r + 1, c);
                for (int k = 0; k < np; ++k) {
                  const uint32_t mask = (1u << pl[k].bits) - 1u;
                  const Slot at = slot(pl[k], lane, i);
                  unit[at.word] |= ((lo >> pl[k].shift) & mask) << at.bit | ((hi >> pl[k].shift) & mask) << (at.bit + 16);
                }
              }
            }
          }
      }
    }
  }
  for (int64_t g = 0; g < TG; ++g) {
    const int64_t sg = t.groups[size_t(g * 8 + 6)];
    for (int64_t c = 0; c < Np; ++c) {
      const uint32_t code = (v.q_scale[sg * (Np / 8) + c / 8] >> (4 * (c % 8))) & 15u;
      const int64_t s = c / kTiledStripCols, cc = c % kTiledStripCols, j = cc / 8, q = (cc % 8) / 2, e = cc % 2;
      t.scale[size_t((g * S + s) * 4 + q)] |= code << (4 * (2 * j + e));
    }
  }
  return t;
}

int exl2_tiled_code(const Exl2Tiled& t, int64_t padded_out, int64_t g, int64_t row, int64_t col) {
  const int32_t* grow = &t.groups[size_t(g * 8)];
  const int bits = grow[0];
  Plane pl[2];
  const int np = planes_of(bits, pl);
  const int64_t units = grow[5] / kTiledUnitRows, u = row / kTiledUnitRows, r = row % kTiledUnitRows;
  const int ks = int(r / 16), h = int(r % 16) / 8, q = int(r % 8) / 2, second = int(r % 2);
  const int64_t s = col / kTiledStripCols, cc = col % kTiledStripCols;
  const int j = int(cc / 8), lane = int(cc % 8) * 4 + q, i = 8 * ks + 2 * j + h;
  const uint32_t* unit = t.weight.data() + int64_t(grow[2]) * padded_out + (s * units + u) * unit_words(bits);
  int code = 0;
  for (int k = 0; k < np; ++k) {
    const Slot at = slot(pl[k], lane, i);
    code |= int((unit[at.word] >> (at.bit + 16 * second)) & ((1u << pl[k].bits) - 1u)) << pl[k].shift;
  }
  return code;
}

int exl2_tiled_scale_code(const Exl2Tiled& t, int64_t padded_out, int64_t g, int64_t col) {
  const int64_t S = padded_out / kTiledStripCols, s = col / kTiledStripCols, cc = col % kTiledStripCols;
  const int64_t j = cc / 8, q = (cc % 8) / 2, e = cc % 2;
  return int((t.scale[size_t((g * S + s) * 4 + q)] >> (4 * (2 * j + e))) & 15u);
}

void exl2_attach_tiled(ops::Exl2View& v, const Exl2Tiled& t) {
  v.tiled = t.weight.data();
  v.tiled_scale = t.scale.data();
  v.tiled_groups = t.groups.data();
  v.tiled_perm = t.perm.data();
  v.tiled_rows = t.padded_rows;
  v.tiled_num_groups = t.num_groups();
  v.max_tiled_rows = t.max_group_rows;
  v.max_tiled_qrows = t.max_group_qrows;
  v.tiled_qrows = t.qrows;
}

}  // namespace lathe::quant
