/* DES for the ANSI X9.19 retail MAC, several CBC chains at once.
 *
 * Why not OpenSSL's DES: a CBC-MAC is one chain of dependent blocks, and one DES block is a
 * chain of 16 dependent rounds of table lookups, so a single MAC runs at the latency of those
 * lookups (~90 ns a block here) while most of the core's execution units idle. A batch of
 * requests holds many independent chains: stepping 2-4 of them in lockstep lets their rounds
 * overlap. Two further savings: the chain is kept after the initial permutation (IP is linear
 * over XOR, so IP(chain ^ block) = IP(chain) ^ IP(block), and IP/FP leave the chain's critical
 * path), and X9.19's final decrypt-encrypt runs on the same lanes.
 *
 * Written from FIPS 46-3 (the S-boxes and permutations below); the round uses the usual
 * "SP table" form: S-box and P permutation merged into eight tables of 32-bit words (256
 * entries, indexed by a whole byte), built at start from those tables. tests/test_crypto.py
 * checks it against OpenSSL.
 */
#ifndef ONECARD_DES_LANES_H
#define ONECARD_DES_LANES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint32_t even;       /* subkey chunks 0, 2, 4, 6 in the low 6 bits of bytes 3, 2, 1, 0 */
    uint32_t odd;        /* subkey chunks 7, 1, 3, 5 likewise */
} OcDesRound;

/* A round's two words side by side: des_vbmi.h loads a lane's round key as one 64-bit word. */
typedef struct {
    OcDesRound r[16];
} OcDesKey;

typedef struct {
    const OcDesKey* k1;      /* left key half, encryption order */
    const OcDesKey* k2d;     /* right key half, decryption order */
    const uint8_t* data;
    size_t n;                /* bytes; zero-padded to whole blocks, at least one block */
    uint8_t* out8;
} OcMacJob;

enum { OC_LANES = 4 };

static const uint8_t OC_SBOX[8][64] = {
    {14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7,
     0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8,
     4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0,
     15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13},
    {15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10,
     3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5,
     0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15,
     13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9},
    {10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8,
     13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1,
     13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7,
     1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12},
    {7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15,
     13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9,
     10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4,
     3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14},
    {2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9,
     14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6,
     4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14,
     11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3},
    {12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11,
     10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8,
     9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6,
     4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13},
    {4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1,
     13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6,
     1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2,
     6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12},
    {13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7,
     1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2,
     7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8,
     2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11},
};

/* Bit numbers count from 1 at the most significant bit, as in the standard. */
static const uint8_t OC_P[32] = {16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10,
                                 2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11, 4, 25};
static const uint8_t OC_PC1[56] = {57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18,
                                   10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60, 52, 44, 36,
                                   63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22,
                                   14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 28, 20, 12, 4};
static const uint8_t OC_PC2[48] = {14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10,
                                   23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2,
                                   41, 52, 31, 37, 47, 55, 30, 40, 51, 45, 33, 48,
                                   44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32};
static const uint8_t OC_SHIFTS[16] = {1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1};

/* OC_SP[i][b]: the P permutation of S-box i's output for the low 6 bits of the byte b (256
   entries, the top two bits ignored, so a chunk is taken from its byte without a mask). */
static uint32_t OC_SP[8][256];

static void oc_des_init(void) {
    for (int i = 0; i < 8; i++) {
        for (int b = 0; b < 256; b++) {
            int x = b & 63, row = ((x >> 4) & 2) | (x & 1), col = (x >> 1) & 15;
            uint32_t s = (uint32_t)OC_SBOX[i][row * 16 + col] << (28 - 4 * i), p = 0;
            for (int j = 0; j < 32; j++)
                p |= ((s >> (32 - OC_P[j])) & 1u) << (31 - j);
            OC_SP[i][b] = p;
        }
    }
}

static inline uint32_t oc_rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static inline uint32_t oc_load32(const uint8_t* p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void oc_store32(uint8_t* p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* Swap the bits of b selected by m with those of a n places higher (Hoey's permutation steps:
   five of them give IP; in reverse order, FP). */
#define OC_PERM(a, b, n, m) do { uint32_t t_ = (((a) >> (n)) ^ (b)) & (m); \
    (b) ^= t_; (a) ^= t_ << (n); } while (0)

static inline void oc_ip(uint32_t* l, uint32_t* r) {
    OC_PERM(*l, *r, 4, 0x0f0f0f0fu);
    OC_PERM(*l, *r, 16, 0x0000ffffu);
    OC_PERM(*r, *l, 2, 0x33333333u);
    OC_PERM(*r, *l, 8, 0x00ff00ffu);
    OC_PERM(*l, *r, 1, 0x55555555u);
}

static inline void oc_fp(uint32_t* l, uint32_t* r) {
    OC_PERM(*l, *r, 1, 0x55555555u);
    OC_PERM(*r, *l, 8, 0x00ff00ffu);
    OC_PERM(*r, *l, 2, 0x33333333u);
    OC_PERM(*l, *r, 16, 0x0000ffffu);
    OC_PERM(*l, *r, 4, 0x0f0f0f0fu);
}

/* key8: 8 key bytes (parity bits ignored). enc gets the subkeys in encryption order, dec
   (may be NULL; not enc) in decryption order. */
static void oc_des_key(const uint8_t* key8, OcDesKey* enc, OcDesKey* dec) {
    uint64_t k = 0, cd = 0;
    for (int i = 0; i < 8; i++)
        k = (k << 8) | key8[i];
    for (int j = 0; j < 56; j++)
        cd |= ((k >> (64 - OC_PC1[j])) & 1u) << (55 - j);
    uint32_t c = (uint32_t)(cd >> 28), d = (uint32_t)(cd & 0x0fffffffu);
    for (int round = 0; round < 16; round++) {
        int s = OC_SHIFTS[round];
        c = ((c << s) | (c >> (28 - s))) & 0x0fffffffu;
        d = ((d << s) | (d >> (28 - s))) & 0x0fffffffu;
        uint64_t both = ((uint64_t)c << 28) | d, sub = 0;
        for (int j = 0; j < 48; j++)
            sub |= ((both >> (56 - OC_PC2[j])) & 1u) << (47 - j);
        uint32_t chunk[8];
        for (int i = 0; i < 8; i++)
            chunk[i] = (uint32_t)(sub >> (42 - 6 * i)) & 63u;
        enc->r[round].even = chunk[0] << 24 | chunk[2] << 16 | chunk[4] << 8 | chunk[6];
        enc->r[round].odd = chunk[7] << 24 | chunk[1] << 16 | chunk[3] << 8 | chunk[5];
    }
    if (dec != NULL) {
        for (int round = 0; round < 16; round++) {
            dec->r[round] = enc->r[15 - round];
        }
    }
}

/* One round on R: the expansion E is two rotations (each 6-bit chunk of E(R) lands in the
   low bits of a byte of t or u), so the 48-bit XOR with the subkey is two 32-bit ones and
   each table index is a byte. */
#define OC_F(R, K, round) ({ \
    uint32_t t_ = oc_rotr((R), 3) ^ (K)->r[round].even; \
    uint32_t u_ = oc_rotr((R), 7) ^ (K)->r[round].odd; \
    OC_SP[0][t_ >> 24] ^ OC_SP[2][(uint8_t)(t_ >> 16)] ^ OC_SP[4][(uint8_t)(t_ >> 8)] ^ \
    OC_SP[6][(uint8_t)t_] ^ OC_SP[7][u_ >> 24] ^ OC_SP[1][(uint8_t)(u_ >> 16)] ^ \
    OC_SP[3][(uint8_t)(u_ >> 8)] ^ OC_SP[5][(uint8_t)u_]; })

/* DES between IP and FP: (l, r) after IP in, (l, r) to give to FP out. */
static inline void oc_des_ip1(uint32_t* l, uint32_t* r, const OcDesKey* k) {
    uint32_t L = *l, R = *r;
    for (int round = 0; round < 16; round += 2) {
        L ^= OC_F(R, k, round);
        R ^= OC_F(L, k, round + 1);
    }
    *l = R;
    *r = L;
}

/* The same on `lanes` chains in lockstep (their rounds overlap in the out-of-order core). */
static inline void oc_des_ip_lanes(uint32_t* l, uint32_t* r, const OcDesKey* const* k,
                                   int lanes) {
    uint32_t L0 = l[0], R0 = r[0], L1 = l[1], R1 = r[1];
    uint32_t L2 = l[2], R2 = r[2], L3 = l[3], R3 = r[3];
    const OcDesKey *k0 = k[0], *k1 = k[1], *k2 = k[2], *k3 = k[3];
    if (lanes > 2) {
        for (int round = 0; round < 16; round += 2) {
            L0 ^= OC_F(R0, k0, round); L1 ^= OC_F(R1, k1, round);
            L2 ^= OC_F(R2, k2, round); L3 ^= OC_F(R3, k3, round);
            R0 ^= OC_F(L0, k0, round + 1); R1 ^= OC_F(L1, k1, round + 1);
            R2 ^= OC_F(L2, k2, round + 1); R3 ^= OC_F(L3, k3, round + 1);
        }
    } else {
        for (int round = 0; round < 16; round += 2) {
            L0 ^= OC_F(R0, k0, round); L1 ^= OC_F(R1, k1, round);
            R0 ^= OC_F(L0, k0, round + 1); R1 ^= OC_F(L1, k1, round + 1);
        }
    }
    l[0] = R0; r[0] = L0; l[1] = R1; r[1] = L1;
    l[2] = R2; r[2] = L2; l[3] = R3; r[3] = L3;
}

/* Block `step` of a job after IP: its data block, zero-padded; zero for the final two steps. */
static inline void oc_job_block(const OcMacJob* job, size_t step, uint32_t* l, uint32_t* r) {
    size_t at = step * 8;
    if (at + 8 <= job->n) {
        *l = oc_load32(job->data + at);
        *r = oc_load32(job->data + at + 4);
    } else if (at < job->n) {
        uint8_t tail[8] = {0};
        memcpy(tail, job->data + at, job->n - at);
        *l = oc_load32(tail);
        *r = oc_load32(tail + 4);
    } else {
        *l = 0;
        *r = 0;
        return;
    }
    oc_ip(l, r);
}

static inline size_t oc_job_blocks(const OcMacJob* job) {
    return job->n == 0 ? 1 : (job->n + 7) / 8;
}

/* X9.19 MACs of jobs[0..count): CBC-MAC under k1, then decrypt under k2, encrypt under k1. */
static void oc_x919_many(const OcMacJob* jobs, size_t count) {
    uint32_t l[OC_LANES] = {0}, r[OC_LANES] = {0}, xl, xr;
    const OcDesKey* key[OC_LANES];
    size_t job[OC_LANES], step[OC_LANES], blocks[OC_LANES], next = 0;
    int lanes = 0, i;
    if (count == 0)
        return;
    while (lanes < OC_LANES && next < count) {
        job[lanes] = next;
        step[lanes] = 0;
        blocks[lanes] = oc_job_blocks(&jobs[next]);
        l[lanes] = r[lanes] = 0;
        lanes++;
        next++;
    }
    for (i = lanes; i < OC_LANES; i++)
        key[i] = jobs[0].k1;       /* idle lanes compute garbage nobody reads */
    while (lanes > 0) {
        for (i = 0; i < lanes; i++) {
            const OcMacJob* j = &jobs[job[i]];
            oc_job_block(j, step[i], &xl, &xr);
            l[i] ^= xl;
            r[i] ^= xr;
            key[i] = step[i] == blocks[i] ? j->k2d : j->k1;
        }
        if (lanes == 1)
            oc_des_ip1(&l[0], &r[0], key[0]);
        else
            oc_des_ip_lanes(l, r, key, lanes);
        for (i = 0; i < lanes; i++) {
            if (++step[i] < blocks[i] + 2)
                continue;
            oc_fp(&l[i], &r[i]);
            oc_store32(jobs[job[i]].out8, l[i]);
            oc_store32(jobs[job[i]].out8 + 4, r[i]);
            if (next < count) {                  /* the lane takes the next job */
                job[i] = next++;
                step[i] = 0;
                blocks[i] = oc_job_blocks(&jobs[job[i]]);
                l[i] = r[i] = 0;
            } else {                             /* the last lane moves into the gap */
                lanes--;
                job[i] = job[lanes]; step[i] = step[lanes]; blocks[i] = blocks[lanes];
                l[i] = l[lanes]; r[i] = r[lanes];
                i--;
            }
        }
    }
}

#endif
