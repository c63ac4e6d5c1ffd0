/* Constant-time DES / 3DES (EDE, two- and three-key) for the ANSI X9.19 retail MAC of many
 * messages at once, bitsliced: every bit of the block is a machine word whose bit q belongs to
 * message q (a lane), so one pass runs DES for 64 messages (the portable uint64_t path), 256
 * (AVX2) or 512 (AVX-512F) with the same logic operations.
 *
 * Why constant-time: DES's only data-dependent step in a table implementation is the S-box
 * (SP-table) lookup, indexed by key XOR data. Here the S-boxes are Boolean circuits
 * (des_sboxes.h: AND, OR, XOR, NOT on whole slices), and E, P, IP, FP and the key schedule are
 * wiring: loads at indices fixed by the standard, never by a key or data bit. No branch
 * depends on a key or data bit; the only branches and indices that vary come from the number
 * of messages and their lengths, which are public (they are on the wire). The keys enter as
 * slices by the same transposition as the data, so the key schedule costs one transposition
 * per pass and there is no per-key state to look up.
 *
 * Lanes are messages, not blocks: a CBC-MAC is a chain, so a lane steps through its own
 * message. The messages of a pass are right-aligned on the steps (a message of b blocks starts
 * at step blocks_max - b, its lane's chain cleared by a mask that step): all lanes end their
 * chain together and run X9.19's final decrypt (K2) and encrypt (K3 = K1) in the same two
 * passes of DES. The jobs are sorted by length first so that a pass holds similar lengths.
 *
 * X9.19 exactly as des_lanes.h computes it: the data zero-padded to whole blocks (an empty
 * message is one zero block), single-DES CBC-MAC under K1 (zero IV), then the last block
 * decrypted under K2 and encrypted under K3 (K1 for a 16-byte key). A one-block message under
 * a 24-byte key is therefore 3DES-EDE ECB of that block, which the tests use as well.
 */
#ifndef ONECARD_DES_BITSLICE_H
#define ONECARD_DES_BITSLICE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "des_lanes.h"        /* FIPS 46-3 tables: OC_SBOX, OC_P, OC_PC1, OC_PC2, OC_SHIFTS */

typedef struct {
    const uint8_t* key;       /* K1 K2 (16 bytes, K3 = K1) or K1 K2 K3 (24 bytes) */
    size_t key_len;
    const uint8_t* data;
    size_t n;                 /* bytes; zero-padded to whole blocks, at least one block */
    uint8_t* out8;
} OcBsJob;

enum { OC_BS_PORTABLE = 64, OC_BS_AVX2 = 256, OC_BS_AVX512 = 512 };

/* FIPS 46-3, bit numbers from 1 (the most significant bit). */
static const uint8_t OC_BS_IP1[64] = {58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20,
                                      12, 4, 62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40,
                                      32, 24, 16, 8, 57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43,
                                      35, 27, 19, 11, 3, 61, 53, 45, 37, 29, 21, 13, 5, 63, 55,
                                      47, 39, 31, 23, 15, 7};
static const uint8_t OC_BS_E1[48] = {32, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13,
                                     12, 13, 14, 15, 16, 17, 16, 17, 18, 19, 20, 21, 20, 21,
                                     22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 28, 29, 30, 31,
                                     32, 1};

/* The same tables from 0, and those derived from them at start (oc_bs_init). */
static uint8_t OC_BS_IP[64], OC_BS_FP[64], OC_BS_E[48], OC_BS_PINV[32];
static uint8_t OC_BS_KIDX_ENC[16][48];   /* round, subkey bit -> key bit (0 = bit 1) */
static uint8_t OC_BS_KIDX_DEC[16][48];   /* the same rounds in reverse order */

static void oc_bs_init(void) {
    for (int j = 0; j < 64; j++) {
        OC_BS_IP[j] = OC_BS_IP1[j] - 1;
        OC_BS_FP[OC_BS_IP1[j] - 1] = (uint8_t)j;
    }
    for (int j = 0; j < 48; j++)
        OC_BS_E[j] = OC_BS_E1[j] - 1;
    for (int j = 0; j < 32; j++)
        OC_BS_PINV[OC_P[j] - 1] = (uint8_t)j;
    /* Subkey bit j of a round is bit PC2[j] of C D rotated left by the shifts so far, which
       is a fixed bit of C0 D0, itself bit PC1[m] of the key. */
    int shift = 0;
    for (int round = 0; round < 16; round++) {
        shift += OC_SHIFTS[round];
        for (int j = 0; j < 48; j++) {
            int q = OC_PC2[j] - 1;
            int m = q < 28 ? (q + shift) % 28 : 28 + (q - 28 + shift) % 28;
            OC_BS_KIDX_ENC[round][j] = OC_PC1[m] - 1;
        }
    }
    for (int round = 0; round < 16; round++)
        memcpy(OC_BS_KIDX_DEC[round], OC_BS_KIDX_ENC[15 - round], 48);
}

static inline uint64_t oc_bs_load64(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static inline void oc_bs_store64(uint8_t* p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* 64x64 bit matrix transpose in place, bit 63 first (Hacker's Delight's recursive block
   swaps: six rounds of masked shifts, no indexing by the data). */
static inline void oc_bs_transpose64(uint64_t* a) {
    uint64_t m = 0x00000000ffffffffull;
    for (int j = 32; j != 0; j >>= 1, m ^= m << j) {
        for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
            uint64_t t = (a[k] ^ (a[k | j] >> j)) & m;
            a[k] ^= t;
            a[k | j] ^= t << j;
        }
    }
}

static inline size_t oc_bs_blocks(const OcBsJob* job) {
    return job->n == 0 ? 1 : (job->n + 7) / 8;
}

/* Block `index` of a job's message, zero-padded. */
static inline uint64_t oc_bs_block(const OcBsJob* job, size_t index) {
    size_t at = index * 8;
    if (at + 8 <= job->n)
        return oc_bs_load64(job->data + at);
    uint8_t tail[8] = {0};
    if (at < job->n)
        memcpy(tail, job->data + at, job->n - at);
    return oc_bs_load64(tail);
}

static inline const uint8_t* oc_bs_key8(const OcBsJob* job, int slot) {
    if (slot == 2)
        return job->key_len == 24 ? job->key + 16 : job->key;
    return job->key + 8 * slot;
}

#define BS_T uint64_t
#define BS_W 1
#define BS_FN(x) x##_64
#define BS_ATTR
#include "des_bitslice_impl.h"
#undef BS_T
#undef BS_W
#undef BS_FN
#undef BS_ATTR

#if defined(__x86_64__) && defined(__GNUC__)
#define OC_BS_X86 1
typedef uint64_t oc_bs_v256 __attribute__((vector_size(32)));
typedef uint64_t oc_bs_v512 __attribute__((vector_size(64)));
#define BS_T oc_bs_v256
#define BS_W 4
#define BS_FN(x) x##_avx2
#define BS_ATTR __attribute__((target("avx2")))
#include "des_bitslice_impl.h"
#undef BS_T
#undef BS_W
#undef BS_FN
#undef BS_ATTR
#define BS_T oc_bs_v512
#define BS_W 8
#define BS_FN(x) x##_avx512
#define BS_ATTR __attribute__((target("avx512f")))
#include "des_bitslice_impl.h"
#undef BS_T
#undef BS_W
#undef BS_FN
#undef BS_ATTR
#endif

/* The widest path this CPU runs (OC_BS_PORTABLE on a machine without x86 vectors). */
static int oc_bs_widest(void) {
#ifdef OC_BS_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return OC_BS_AVX512;
    if (__builtin_cpu_supports("avx2"))
        return OC_BS_AVX2;
#endif
    return OC_BS_PORTABLE;
}

static int oc_bs_cmp_blocks(const void* a, const void* b) {
    size_t x = oc_bs_blocks(*(const OcBsJob* const*)a);
    size_t y = oc_bs_blocks(*(const OcBsJob* const*)b);
    return (x < y) - (x > y);                       /* longest first */
}

enum { OC_BS_CHUNK = 1024 };   /* jobs sorted together (the order array is on the stack) */

/* X9.19 MACs of jobs[0..count) on the path `width` (an OC_BS_* this CPU runs), or, for
   width 0, the narrowest path that holds the batch in one pass, up to `widest`. */
static void oc_bs_x919_many(const OcBsJob* jobs, size_t count, int width, int widest) {
    const OcBsJob* order[OC_BS_CHUNK];
    for (size_t at = 0; at < count; at += OC_BS_CHUNK) {
        size_t n = count - at < OC_BS_CHUNK ? count - at : OC_BS_CHUNK;
        for (size_t i = 0; i < n; i++)
            order[i] = &jobs[at + i];
        qsort(order, n, sizeof order[0], oc_bs_cmp_blocks);
        int w = width;
        if (w == 0)
            w = n <= 64 ? OC_BS_PORTABLE : n <= 256 && widest >= OC_BS_AVX2 ? OC_BS_AVX2 : widest;
#ifdef OC_BS_X86
        if (w == OC_BS_AVX512) {
            oc_bs_run_avx512(order, n);
            continue;
        }
        if (w == OC_BS_AVX2) {
            oc_bs_run_avx2(order, n);
            continue;
        }
#endif
        oc_bs_run_64(order, n);
    }
}

/* Each S-box circuit against the FIPS table, all 64 inputs at once: 0 when they agree, else
   the first failing S-box's number. The tests call it on every path's circuits. */
static int oc_bs_sbox_check(void) {
    uint64_t a[6] = {0}, out[4];
    for (int v = 0; v < 64; v++)
        for (int j = 0; j < 6; j++)
            a[j] |= (uint64_t)((v >> (5 - j)) & 1) << (63 - v);
    for (int box = 0; box < 8; box++) {
        memset(out, 0, sizeof out);
        oc_bs_sbox_64(box, a, out);
        for (int v = 0; v < 64; v++) {
            int row = ((v >> 4) & 2) | (v & 1), col = (v >> 1) & 15, s = 0;
            for (int m = 0; m < 4; m++)
                s = (s << 1) | (int)((out[m] >> (63 - v)) & 1);
            if (s != OC_SBOX[box][row * 16 + col])
                return box + 1;
        }
    }
    return 0;
}

#endif
