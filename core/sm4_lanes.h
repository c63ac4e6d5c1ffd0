/* SM4 for the SM4 MAC (GB/T 15852.1 MAC algorithm 1, padding method 2), several CBC chains
 * at once: the same reasoning as des_lanes.h. Through OpenSSL's EVP interface an SM4 MAC of a
 * ~100-byte message cost ~1 us (a context reset and calls per message, then one block at a
 * time at the latency of SM4's 32 dependent rounds); here up to 4 chains step in lockstep.
 *
 * Written from GB/T 32907-2016 (S-box, FK; CK is computed from its definition); the round uses
 * four 256-entry tables merging the S-box with the linear transform L, built at start.
 * tests/test_crypto.py checks it against the standard's vector and against OpenSSL.
 */
#ifndef ONECARD_SM4_LANES_H
#define ONECARD_SM4_LANES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint32_t rk[32];
} OcSm4Key;

typedef struct {
    const OcSm4Key* key;
    const uint8_t* data;
    size_t n;                /* bytes; 0x80 and zeros are appended (always) to whole blocks */
    uint8_t* out8;           /* the leftmost 8 bytes of the last CBC block */
} OcSm4Job;

enum { OC_SM4_LANES = 4 };

static const uint8_t OC_SM4_SBOX[256] = {
    0xd6, 0x90, 0xe9, 0xfe, 0xcc, 0xe1, 0x3d, 0xb7, 0x16, 0xb6, 0x14, 0xc2, 0x28, 0xfb, 0x2c, 0x05,
    0x2b, 0x67, 0x9a, 0x76, 0x2a, 0xbe, 0x04, 0xc3, 0xaa, 0x44, 0x13, 0x26, 0x49, 0x86, 0x06, 0x99,
    0x9c, 0x42, 0x50, 0xf4, 0x91, 0xef, 0x98, 0x7a, 0x33, 0x54, 0x0b, 0x43, 0xed, 0xcf, 0xac, 0x62,
    0xe4, 0xb3, 0x1c, 0xa9, 0xc9, 0x08, 0xe8, 0x95, 0x80, 0xdf, 0x94, 0xfa, 0x75, 0x8f, 0x3f, 0xa6,
    0x47, 0x07, 0xa7, 0xfc, 0xf3, 0x73, 0x17, 0xba, 0x83, 0x59, 0x3c, 0x19, 0xe6, 0x85, 0x4f, 0xa8,
    0x68, 0x6b, 0x81, 0xb2, 0x71, 0x64, 0xda, 0x8b, 0xf8, 0xeb, 0x0f, 0x4b, 0x70, 0x56, 0x9d, 0x35,
    0x1e, 0x24, 0x0e, 0x5e, 0x63, 0x58, 0xd1, 0xa2, 0x25, 0x22, 0x7c, 0x3b, 0x01, 0x21, 0x78, 0x87,
    0xd4, 0x00, 0x46, 0x57, 0x9f, 0xd3, 0x27, 0x52, 0x4c, 0x36, 0x02, 0xe7, 0xa0, 0xc4, 0xc8, 0x9e,
    0xea, 0xbf, 0x8a, 0xd2, 0x40, 0xc7, 0x38, 0xb5, 0xa3, 0xf7, 0xf2, 0xce, 0xf9, 0x61, 0x15, 0xa1,
    0xe0, 0xae, 0x5d, 0xa4, 0x9b, 0x34, 0x1a, 0x55, 0xad, 0x93, 0x32, 0x30, 0xf5, 0x8c, 0xb1, 0xe3,
    0x1d, 0xf6, 0xe2, 0x2e, 0x82, 0x66, 0xca, 0x60, 0xc0, 0x29, 0x23, 0xab, 0x0d, 0x53, 0x4e, 0x6f,
    0xd5, 0xdb, 0x37, 0x45, 0xde, 0xfd, 0x8e, 0x2f, 0x03, 0xff, 0x6a, 0x72, 0x6d, 0x6c, 0x5b, 0x51,
    0x8d, 0x1b, 0xaf, 0x92, 0xbb, 0xdd, 0xbc, 0x7f, 0x11, 0xd9, 0x5c, 0x41, 0x1f, 0x10, 0x5a, 0xd8,
    0x0a, 0xc1, 0x31, 0x88, 0xa5, 0xcd, 0x7b, 0xbd, 0x2d, 0x74, 0xd0, 0x12, 0xb8, 0xe5, 0xb4, 0xb0,
    0x89, 0x69, 0x97, 0x4a, 0x0c, 0x96, 0x77, 0x7e, 0x65, 0xb9, 0xf1, 0x09, 0xc5, 0x6e, 0xc6, 0x84,
    0x18, 0xf0, 0x7d, 0xec, 0x3a, 0xdc, 0x4d, 0x20, 0x79, 0xee, 0x5f, 0x3e, 0xd7, 0xcb, 0x39, 0x48,
};

static const uint32_t OC_SM4_FK[4] = {0xa3b1bac6u, 0x56aa3350u, 0x677d9197u, 0xb27022dcu};

/* OC_SM4_T[i][x]: L applied to S-box(x) in byte i (0 = most significant) of a word. */
static uint32_t OC_SM4_T[4][256];

static inline uint32_t oc_rotl(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void oc_sm4_init(void) {
    for (int x = 0; x < 256; x++) {
        uint32_t b = (uint32_t)OC_SM4_SBOX[x] << 24;
        uint32_t l = b ^ oc_rotl(b, 2) ^ oc_rotl(b, 10) ^ oc_rotl(b, 18) ^ oc_rotl(b, 24);
        for (int i = 0; i < 4; i++)
            OC_SM4_T[i][x] = (l >> (8 * i)) | (i ? l << (32 - 8 * i) : 0);
    }
}

static inline uint32_t oc_sm4_tau(uint32_t a) {
    return (uint32_t)OC_SM4_SBOX[a >> 24] << 24 | (uint32_t)OC_SM4_SBOX[(a >> 16) & 255] << 16 |
           (uint32_t)OC_SM4_SBOX[(a >> 8) & 255] << 8 | OC_SM4_SBOX[a & 255];
}

static void oc_sm4_key(const uint8_t* key16, OcSm4Key* k) {
    uint32_t K[4];
    for (int i = 0; i < 4; i++) {
        K[i] = ((uint32_t)key16[4 * i] << 24 | (uint32_t)key16[4 * i + 1] << 16 |
                (uint32_t)key16[4 * i + 2] << 8 | key16[4 * i + 3]) ^ OC_SM4_FK[i];
    }
    for (int i = 0; i < 32; i++) {
        uint32_t ck = 0;
        for (int j = 0; j < 4; j++)
            ck = ck << 8 | (uint32_t)(((4 * i + j) * 7) & 255);
        uint32_t b = oc_sm4_tau(K[1] ^ K[2] ^ K[3] ^ ck);
        uint32_t rk = K[0] ^ b ^ oc_rotl(b, 13) ^ oc_rotl(b, 23);
        k->rk[i] = rk;
        K[0] = K[1]; K[1] = K[2]; K[2] = K[3]; K[3] = rk;
    }
}

#define OC_SM4_T4(a) (OC_SM4_T[0][(a) >> 24] ^ OC_SM4_T[1][((a) >> 16) & 255] ^ \
                      OC_SM4_T[2][((a) >> 8) & 255] ^ OC_SM4_T[3][(a) & 255])

/* Encrypt `lanes` blocks (x[lane][0..3], words big-endian) in lockstep, in place. */
static inline void oc_sm4_lanes(uint32_t (*x)[4], const OcSm4Key* const* k, int lanes) {
    if (lanes == 1) {
        uint32_t a = x[0][0], b = x[0][1], c = x[0][2], d = x[0][3];
        const uint32_t* rk = k[0]->rk;
        for (int i = 0; i < 32; i += 4) {
            a ^= OC_SM4_T4(b ^ c ^ d ^ rk[i]);
            b ^= OC_SM4_T4(c ^ d ^ a ^ rk[i + 1]);
            c ^= OC_SM4_T4(d ^ a ^ b ^ rk[i + 2]);
            d ^= OC_SM4_T4(a ^ b ^ c ^ rk[i + 3]);
        }
        x[0][0] = d; x[0][1] = c; x[0][2] = b; x[0][3] = a;
        return;
    }
    uint32_t a0 = x[0][0], b0 = x[0][1], c0 = x[0][2], d0 = x[0][3];
    uint32_t a1 = x[1][0], b1 = x[1][1], c1 = x[1][2], d1 = x[1][3];
    uint32_t a2 = x[2][0], b2 = x[2][1], c2 = x[2][2], d2 = x[2][3];
    uint32_t a3 = x[3][0], b3 = x[3][1], c3 = x[3][2], d3 = x[3][3];
    const uint32_t *r0 = k[0]->rk, *r1 = k[1]->rk, *r2 = k[2]->rk, *r3 = k[3]->rk;
    for (int i = 0; i < 32; i += 4) {
#define OC_SM4_STEP(A, B, C, D, R, j) A ^= OC_SM4_T4(B ^ C ^ D ^ R[i + j])
        OC_SM4_STEP(a0, b0, c0, d0, r0, 0); OC_SM4_STEP(a1, b1, c1, d1, r1, 0);
        OC_SM4_STEP(a2, b2, c2, d2, r2, 0); OC_SM4_STEP(a3, b3, c3, d3, r3, 0);
        OC_SM4_STEP(b0, c0, d0, a0, r0, 1); OC_SM4_STEP(b1, c1, d1, a1, r1, 1);
        OC_SM4_STEP(b2, c2, d2, a2, r2, 1); OC_SM4_STEP(b3, c3, d3, a3, r3, 1);
        OC_SM4_STEP(c0, d0, a0, b0, r0, 2); OC_SM4_STEP(c1, d1, a1, b1, r1, 2);
        OC_SM4_STEP(c2, d2, a2, b2, r2, 2); OC_SM4_STEP(c3, d3, a3, b3, r3, 2);
        OC_SM4_STEP(d0, a0, b0, c0, r0, 3); OC_SM4_STEP(d1, a1, b1, c1, r1, 3);
        OC_SM4_STEP(d2, a2, b2, c2, r2, 3); OC_SM4_STEP(d3, a3, b3, c3, r3, 3);
#undef OC_SM4_STEP
    }
    x[0][0] = d0; x[0][1] = c0; x[0][2] = b0; x[0][3] = a0;
    x[1][0] = d1; x[1][1] = c1; x[1][2] = b1; x[1][3] = a1;
    x[2][0] = d2; x[2][1] = c2; x[2][2] = b2; x[2][3] = a2;
    x[3][0] = d3; x[3][1] = c3; x[3][2] = b3; x[3][3] = a3;
}

static inline size_t oc_sm4_blocks(const OcSm4Job* job) { return job->n / 16 + 1; }

/* XOR block `step` of a job (padding method 2: 0x80 after the data, then zeros) into x. */
static inline void oc_sm4_absorb(const OcSm4Job* job, size_t step, uint32_t* x) {
    uint8_t block[16];
    const uint8_t* p;
    size_t at = step * 16;
    if (at + 16 <= job->n) {
        p = job->data + at;
    } else {
        memset(block, 0, 16);
        memcpy(block, job->data + at, job->n - at);
        block[job->n - at] = 0x80;
        p = block;
    }
    for (int i = 0; i < 4; i++)
        x[i] ^= (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
                (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
}

/* SM4 MACs of jobs[0..count). */
static void oc_sm4_mac_many(const OcSm4Job* jobs, size_t count) {
    uint32_t x[OC_SM4_LANES][4];
    const OcSm4Key* key[OC_SM4_LANES];
    size_t job[OC_SM4_LANES], step[OC_SM4_LANES], blocks[OC_SM4_LANES], next = 0;
    int lanes = 0, i;
    if (count == 0)
        return;
    memset(x, 0, sizeof(x));
    while (lanes < OC_SM4_LANES && next < count) {
        job[lanes] = next;
        step[lanes] = 0;
        blocks[lanes] = oc_sm4_blocks(&jobs[next]);
        key[lanes] = jobs[next].key;
        lanes++;
        next++;
    }
    for (i = lanes; i < OC_SM4_LANES; i++)
        key[i] = jobs[0].key;      /* idle lanes compute garbage nobody reads */
    while (lanes > 0) {
        for (i = 0; i < lanes; i++)
            oc_sm4_absorb(&jobs[job[i]], step[i], x[i]);
        oc_sm4_lanes(x, key, lanes);
        for (i = 0; i < lanes; i++) {
            if (++step[i] < blocks[i])
                continue;
            uint8_t* out = jobs[job[i]].out8;
            for (int w = 0; w < 2; w++) {
                out[4 * w] = (uint8_t)(x[i][w] >> 24); out[4 * w + 1] = (uint8_t)(x[i][w] >> 16);
                out[4 * w + 2] = (uint8_t)(x[i][w] >> 8); out[4 * w + 3] = (uint8_t)x[i][w];
            }
            if (next < count) {                  /* the lane takes the next job */
                job[i] = next++;
                step[i] = 0;
                blocks[i] = oc_sm4_blocks(&jobs[job[i]]);
                key[i] = jobs[job[i]].key;
                memset(x[i], 0, sizeof(x[i]));
            } else {                             /* the last lane moves into the gap */
                lanes--;
                job[i] = job[lanes]; step[i] = step[lanes]; blocks[i] = blocks[lanes];
                key[i] = key[lanes];
                memcpy(x[i], x[lanes], sizeof(x[i]));
                i--;
            }
        }
    }
}

#endif
