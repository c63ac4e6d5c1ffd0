/* Constant-time DES for the ANSI X9.19 retail MAC of 64 messages at once, byte-sliced with the
 * S-box tables held in registers (AVX-512 VBMI + GFNI: Ice Lake, Zen 4 and later).
 *
 * The layout: a 512-bit register holds one byte of the DES state for 64 messages (byte q is
 * lane q), so the state after IP is eight registers, L0..L3 and R0..R3 (byte 0 the most
 * significant). A round builds each S-box's 6-bit input for the 64 lanes from two bytes of R
 * (GF2P8AFFINEQB shifts each byte on its own: no bit crosses a lane) and the lanes' subkey
 * bytes, then looks it up with VPERMB in 64-byte tables that are registers, not memory: for
 * S-box j and byte c of the round's output, table (j, c) is byte c of the P permutation of
 * S_j (the usual SP table, cut into bytes), 30 of them non-zero. VPERMB's index only selects
 * among the bytes of a register; its timing does not depend on it, and no load, store or
 * branch anywhere below depends on a key or data bit (the S-box tables and the permutation
 * indices are loaded at fixed addresses; branches and indices come from the number of
 * messages and their lengths, which are public, as in des_bitslice.h).
 *
 * Per lane and block that is ~3 operations of the round's 64-lane work, against ~17 cycles of
 * dependent lookups in des_lanes.h: the lanes are what is parallel, as in the bitsliced path,
 * but 64 of them fill a register here where the bitsliced paths need 256 or 512.
 *
 * Keys: the lanes' subkeys are the per-terminal schedules des_lanes.h already keeps (an
 * OcDesKey, set at sign-on: 16 rounds x 8 bytes, one 6-bit chunk a byte), transposed to the
 * lanes once per pass of 64 messages, not per block. The data blocks are transposed in (and
 * the MACs out) as 64 x 8 bytes <-> 8 registers: a byte transpose inside each register, then
 * an 8 x 8 transpose of 64-bit words across registers. IP and FP are 8 x 8 bit transposes
 * across the eight byte registers.
 *
 * X9.19 as des_lanes.h: zero-padded, CBC-MAC under K1 with a zero IV, the last block
 * decrypted under K2 and encrypted under K1. Messages of a pass are right-aligned on the
 * steps (as des_bitslice.h): all finish together.
 */
#ifndef ONECARD_DES_VBMI_H
#define ONECARD_DES_VBMI_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "des_lanes.h"

/* Whether the VBMI path beats the table's on jobs[0..count), from the costs bench.macs
   measured (ns, this 2-core VM): the table's ~44 a block of every message (two more blocks a
   message for the final decrypt-encrypt), the VBMI path's ~670 a pass of 64 (round keys,
   sort, output) and ~270 a step of the pass's longest message. It picks the table below ~8
   messages of 64 bytes, ~9 of 32 bytes, ~12 of 8 bytes (protocols/ISO8583.md). Public
   inputs only: the number of messages and their lengths. */
enum { OC_VB_TABLE_BLOCK_NS = 44, OC_VB_PASS_NS = 670, OC_VB_STEP_NS = 270 };

static int oc_vb_prefer(const OcMacJob* jobs, size_t count) {
    size_t steps = 0, longest = 0;
    for (size_t i = 0; i < count; i++) {
        size_t b = (jobs[i].n == 0 ? 1 : (jobs[i].n + 7) / 8) + 2;
        steps += b;
        longest = b > longest ? b : longest;
    }
    size_t passes = (count + 63) / 64;
    return steps * OC_VB_TABLE_BLOCK_NS > passes * (OC_VB_PASS_NS + longest * OC_VB_STEP_NS);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define OC_VB_X86 1
#define OC_VB_ATTR __attribute__((target("avx512f,avx512bw,avx512vbmi,gfni")))

/* OC_VB_SP[j][c][x]: byte c of OC_SP[j][x] (x = 0..63, the S-box input, first E bit the most
   significant of the six). */
static uint8_t OC_VB_SP[8][4][64] __attribute__((aligned(64)));

/* The byte positions of the subkey chunks in an OcDesRound read as a little-endian 64-bit
   word: even = chunks 6 4 2 0 in bytes 0..3, odd = chunks 5 3 1 7 in bytes 4..7. */
static const int OC_VB_KPOS[8] = {3, 6, 2, 5, 1, 4, 0, 7};

static void oc_vb_init(void) {
    oc_des_init();
    for (int j = 0; j < 8; j++)
        for (int c = 0; c < 4; c++)
            for (int x = 0; x < 64; x++)
                OC_VB_SP[j][c][x] = (uint8_t)(OC_SP[j][x] >> (24 - 8 * c));
}

/* GF2P8AFFINEQB matrices (output bit i of a byte = parity of row 7 - i AND the byte): */
#define OC_VB_MAT(r0, r1, r2, r3, r4, r5, r6, r7) \
    ((uint64_t)(r7) | (uint64_t)(r6) << 8 | (uint64_t)(r5) << 16 | (uint64_t)(r4) << 24 | \
     (uint64_t)(r3) << 32 | (uint64_t)(r2) << 40 | (uint64_t)(r1) << 48 | (uint64_t)(r0) << 56)
/* rows given for output bits 0..7 */
#define OC_VB_SHR3 OC_VB_MAT(0x08, 0x10, 0x20, 0x40, 0x80, 0, 0, 0)      /* x >> 3 */
#define OC_VB_BIT0_TO5 OC_VB_MAT(0, 0, 0, 0, 0, 0x01, 0, 0)             /* (x & 1) << 5 */
#define OC_VB_LOW5_SHL1 OC_VB_MAT(0, 0x01, 0x02, 0x04, 0x08, 0x10, 0, 0)  /* (x & 31) << 1 */
#define OC_VB_SHR7 OC_VB_MAT(0x80, 0, 0, 0, 0, 0, 0, 0)                 /* x >> 7 */

OC_VB_ATTR static inline __m512i oc_vb_aff(__m512i x, uint64_t mat) {
    return _mm512_gf2p8affine_epi64_epi8(x, _mm512_set1_epi64((long long)mat), 0);
}

/* The byte transpose inside each register: byte 8 l + b <-> byte 8 b + l. */
OC_VB_ATTR static inline void oc_vb_inside(__m512i* z) {
    static const uint8_t inside[64] __attribute__((aligned(64))) = {
        0, 8, 16, 24, 32, 40, 48, 56, 1, 9, 17, 25, 33, 41, 49, 57,
        2, 10, 18, 26, 34, 42, 50, 58, 3, 11, 19, 27, 35, 43, 51, 59,
        4, 12, 20, 28, 36, 44, 52, 60, 5, 13, 21, 29, 37, 45, 53, 61,
        6, 14, 22, 30, 38, 46, 54, 62, 7, 15, 23, 31, 39, 47, 55, 63};
    const __m512i in = _mm512_load_si512((const void*)inside);
    for (int g = 0; g < 8; g++)
        z[g] = _mm512_permutexvar_epi8(in, z[g]);
}

/* The 8 x 8 transpose of 64-bit words across the registers: word w of z[g] <-> word g of
   z[w] (block swaps of 4, 2, 1 words; the indices are constants, the loops unrolled). */
static const long long OC_VB_LO[3][8] __attribute__((aligned(64))) = {
    {0, 1, 2, 3, 8, 9, 10, 11}, {0, 1, 8, 9, 4, 5, 12, 13}, {0, 8, 2, 10, 4, 12, 6, 14}};
static const long long OC_VB_HI[3][8] __attribute__((aligned(64))) = {
    {4, 5, 6, 7, 12, 13, 14, 15}, {2, 3, 10, 11, 6, 7, 14, 15}, {1, 9, 3, 11, 5, 13, 7, 15}};

OC_VB_ATTR static inline void oc_vb_across(__m512i* z) {
#pragma GCC unroll 3
    for (int s = 0; s < 3; s++) {
        const int d = 4 >> s;
        const __m512i ilo = _mm512_load_si512((const void*)OC_VB_LO[s]);
        const __m512i ihi = _mm512_load_si512((const void*)OC_VB_HI[s]);
#pragma GCC unroll 8
        for (int a = 0; a < 8; a++) {
            if (a & d)
                continue;
            __m512i x = z[a], y = z[a + d];
            z[a] = _mm512_permutex2var_epi64(x, ilo, y);
            z[a + d] = _mm512_permutex2var_epi64(x, ihi, y);
        }
    }
}

/* 64 rows of 8 bytes (z[g] holds rows 8 g .. 8 g + 7; row q = lane q) to 8 registers
   (register b = byte b of every lane), and back. */
OC_VB_ATTR static inline void oc_vb_to_lanes(__m512i* z) {
    oc_vb_inside(z);
    oc_vb_across(z);
}

OC_VB_ATTR static inline void oc_vb_to_rows(__m512i* z) {
    oc_vb_across(z);
    oc_vb_inside(z);
}

/* 8 x 8 bit transpose across the registers, in every byte: bit i of z[j] <-> bit j of z[i]
   (bits from the least significant). Masked swaps; no bit crosses a byte. */
OC_VB_ATTR static inline void oc_vb_bits(__m512i* z) {
    static const uint8_t masks[3] = {0x0f, 0x33, 0x55};
#pragma GCC unroll 3
    for (int m = 0; m < 3; m++) {
        const int s = 4 >> m;
        const __m512i mask = _mm512_set1_epi8((char)masks[m]);
#pragma GCC unroll 8
        for (int a = 0; a < 8; a++) {
            if (a & s)
                continue;
            __m512i t = _mm512_and_si512(
                _mm512_xor_si512(_mm512_srli_epi64(z[a], (unsigned)s), z[a + s]), mask);
            z[a + s] = _mm512_xor_si512(z[a + s], t);
            z[a] = _mm512_xor_si512(z[a], _mm512_slli_epi64(t, (unsigned)s));
        }
    }
}

/* IP on byte registers b[0..7] (the block's bytes): x[0..7] = L0..L3 R0..R3. */
OC_VB_ATTR static inline void oc_vb_ip(__m512i* b, __m512i* x) {
    oc_vb_bits(b);
    x[0] = b[6]; x[1] = b[4]; x[2] = b[2]; x[3] = b[0];
    x[4] = b[7]; x[5] = b[5]; x[6] = b[3]; x[7] = b[1];
}

/* FP, the inverse: x (the preoutput) to the block's bytes b. */
OC_VB_ATTR static inline void oc_vb_fp(const __m512i* x, __m512i* b) {
    b[6] = x[0]; b[4] = x[1]; b[2] = x[2]; b[0] = x[3];
    b[7] = x[4]; b[5] = x[5]; b[3] = x[6]; b[1] = x[7];
    oc_vb_bits(b);
}

/* One DES between IP and FP on x (L0..L3 R0..R3 in, the preoutput R16 L16 out) under the
   lanes' round keys k[round][chunk] (a byte a lane). */
OC_VB_ATTR static void oc_vb_des(__m512i* x, const __m512i (*k)[8]) {
    __m512i l[4] = {x[0], x[1], x[2], x[3]}, r[4] = {x[4], x[5], x[6], x[7]};
    for (int round = 0; round < 16; round++) {
        __m512i idx[8], acc[4] = {l[0], l[1], l[2], l[3]};
        for (int m = 0; m < 4; m++) {
            /* chunk 2m: bit 0 of R byte m-1, then bits 7..3 of byte m; chunk 2m+1: bits 4..0
               of byte m, then bit 7 of byte m+1 */
            idx[2 * m] = _mm512_ternarylogic_epi64(oc_vb_aff(r[m], OC_VB_SHR3),
                                                   oc_vb_aff(r[(m + 3) & 3], OC_VB_BIT0_TO5),
                                                   k[round][2 * m], 0x96);
            idx[2 * m + 1] = _mm512_ternarylogic_epi64(oc_vb_aff(r[m], OC_VB_LOW5_SHL1),
                                                       oc_vb_aff(r[(m + 1) & 3], OC_VB_SHR7),
                                                       k[round][2 * m + 1], 0x96);
        }
        for (int c = 0; c < 4; c++) {
            for (int j = 0; j < 8; j += 2) {    /* two lookups folded in per three-way XOR */
                __m512i a = (j == 0 && c == 0) ? _mm512_setzero_si512() : _mm512_permutexvar_epi8(
                    idx[j], _mm512_load_si512((const void*)OC_VB_SP[j][c]));
                __m512i e = (j + 1 == 4 && c == 2) ? _mm512_setzero_si512() : _mm512_permutexvar_epi8(
                    idx[j + 1], _mm512_load_si512((const void*)OC_VB_SP[j + 1][c]));
                acc[c] = _mm512_ternarylogic_epi64(acc[c], a, e, 0x96);
            }
        }
        for (int c = 0; c < 4; c++) {          /* L' = R, R' = L ^ f(R) */
            l[c] = r[c];
            r[c] = acc[c];
        }
    }
    for (int c = 0; c < 4; c++) {
        x[c] = r[c];
        x[4 + c] = l[c];
    }
}

/* The lanes' round keys for one key of every job: k[round][chunk]. keys[0..64) are the
   lanes' schedules (lanes without a job point at a zero one), loaded whole (two registers a
   lane: rounds 0-7, 8-15); a transpose of words across each 8 lanes' registers gives each
   round's words of those lanes, which to_lanes turns into the round's chunks. */
OC_VB_ATTR static void oc_vb_keys(const OcDesKey* const* keys, __m512i (*k)[8]) {
    __m512i lo[8], hi[8], z[8];
    for (int g = 0; g < 8; g++) {
        for (int l = 0; l < 8; l++) {
            lo[l] = _mm512_loadu_si512((const void*)&keys[8 * g + l]->r[0]);
            hi[l] = _mm512_loadu_si512((const void*)&keys[8 * g + l]->r[8]);
        }
        oc_vb_across(lo);
        oc_vb_across(hi);
        for (int round = 0; round < 8; round++) {
            k[round][g] = lo[round];             /* k as scratch: round's words, lanes 8g.. */
            k[8 + round][g] = hi[round];
        }
    }
    for (int round = 0; round < 16; round++) {
        for (int g = 0; g < 8; g++)
            z[g] = k[round][g];
        oc_vb_to_lanes(z);
        for (int j = 0; j < 8; j++)
            k[round][j] = z[OC_VB_KPOS[j]];
    }
}

static inline size_t oc_vb_blocks(const OcMacJob* job) {
    return job->n == 0 ? 1 : (job->n + 7) / 8;
}

/* Block `index` of a job's message, zero-padded, as stored (big-endian bytes). */
static inline uint64_t oc_vb_block(const OcMacJob* job, size_t index) {
    uint64_t v = 0;
    size_t at = index * 8;
    if (at + 8 <= job->n)
        memcpy(&v, job->data + at, 8);
    else if (at < job->n)
        memcpy(&v, job->data + at, job->n - at);
    return v;
}

/* The blocks of step `step` into the lanes' state x (after IP): a lane whose message starts
   at this step takes its block, one that runs XORs it into its chain, one not yet started
   holds zero. */
OC_VB_ATTR static void oc_vb_step(const OcMacJob* const* jobs, size_t count, size_t blocks,
                                  size_t step, __m512i* x) {
    uint64_t rows[64] __attribute__((aligned(64)));
    uint64_t starts = 0;
    __m512i z[8], b[8];
    for (size_t q = 0; q < 64; q++) {
        rows[q] = 0;
        if (q >= count)
            continue;
        size_t first = blocks - oc_vb_blocks(jobs[q]);   /* public: from the length */
        if (step < first)
            continue;
        rows[q] = oc_vb_block(jobs[q], step - first);
        if (step == first)
            starts |= (uint64_t)1 << q;
    }
    for (int g = 0; g < 8; g++)
        z[g] = _mm512_load_si512((const void*)(rows + 8 * g));
    oc_vb_to_lanes(z);
    oc_vb_ip(z, b);
    for (int i = 0; i < 8; i++)
        x[i] = _mm512_mask_mov_epi8(_mm512_xor_si512(x[i], b[i]), (__mmask64)starts, b[i]);
}

/* One pass: jobs[0..count), count <= 64, `blocks` the most blocks among them. */
OC_VB_ATTR static void oc_vb_pass(const OcMacJob* const* jobs, size_t count, size_t blocks) {
    __m512i k1[16][8], k2[16][8], x[8], z[8];
    static const OcDesKey zero;
    const OcDesKey* keys[64];
    uint64_t rows[64] __attribute__((aligned(64)));
    for (size_t q = 0; q < 64; q++)
        keys[q] = q < count ? jobs[q]->k1 : &zero;
    oc_vb_keys(keys, k1);
    for (size_t q = 0; q < count; q++)
        keys[q] = jobs[q]->k2d;
    oc_vb_keys(keys, k2);
    for (int i = 0; i < 8; i++)
        x[i] = _mm512_setzero_si512();
    for (size_t step = 0; step < blocks; step++) {
        oc_vb_step(jobs, count, blocks, step, x);
        oc_vb_des(x, (const __m512i (*)[8])k1);
    }
    oc_vb_des(x, (const __m512i (*)[8])k2);
    oc_vb_des(x, (const __m512i (*)[8])k1);
    oc_vb_fp(x, z);
    oc_vb_to_rows(z);
    for (int g = 0; g < 8; g++)
        _mm512_store_si512((void*)(rows + 8 * g), z[g]);
    for (size_t q = 0; q < count; q++)
        memcpy(jobs[q]->out8, &rows[q], 8);
    memset(k1, 0, sizeof k1);      /* no key material left on the stack */
    memset(k2, 0, sizeof k2);
}

static int oc_vb_cmp_blocks(const void* a, const void* b) {
    size_t x = oc_vb_blocks(*(const OcMacJob* const*)a);
    size_t y = oc_vb_blocks(*(const OcMacJob* const*)b);
    return (x < y) - (x > y);                       /* longest first */
}

/* 1 when this CPU runs the path. */
static int oc_vb_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("gfni");
}

/* X9.19 MACs of jobs[0..count) in passes of 64, longest messages first (a pass holds
   similar lengths). The caller checks oc_vb_supported(). */
static void oc_vb_x919_many(const OcMacJob* jobs, size_t count) {
    const OcMacJob* order[256];
    for (size_t at = 0; at < count; at += 256) {
        size_t n = count - at < 256 ? count - at : 256;
        for (size_t i = 0; i < n; i++)
            order[i] = &jobs[at + i];
        qsort(order, n, sizeof order[0], oc_vb_cmp_blocks);
        for (size_t p = 0; p < n; p += 64)
            oc_vb_pass(order + p, n - p < 64 ? n - p : 64, oc_vb_blocks(order[p]));
    }
}

#else
static void oc_vb_init(void) {}
static int oc_vb_supported(void) { return 0; }
static void oc_vb_x919_many(const OcMacJob* jobs, size_t count) { (void)jobs; (void)count; }
#endif

#endif
