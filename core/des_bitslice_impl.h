/* Bitsliced DES for one slice width: included by des_bitslice.h once per width, with
 *   BS_T      the slice type (uint64_t, or a GCC vector of them)
 *   BS_W      64-bit words in a slice (lanes = 64 * BS_W)
 *   BS_FN(x)  the width's name for x
 *   BS_ATTR   function attributes (the target ISA of a vector width)
 * A slice holds one bit of the block (or key) for every lane: word w, bit 63 - q is lane
 * 64 * w + q. Everything below is bitwise logic on slices and loads at public indices.
 */

#include "des_sboxes.h"       /* the eight S-box circuits for this BS_T */

/* One DES (16 rounds, between IP and FP) on the lanes' state x (64 slices, after IP: x[0..31]
   is L, x[32..63] is R), under key slices k (64, key bit 1 first) in the order of `sched`
   (OC_BS_KIDX_ENC or _DEC). The halves come out swapped, as the last round leaves them. */
BS_ATTR static void BS_FN(oc_bs_des)(BS_T* x, const BS_T* k, const uint8_t (*sched)[48]) {
    BS_T* l = x;
    BS_T* r = x + 32;
    for (int round = 0; round < 16; round++) {
        const uint8_t* ki = sched[round];
        BS_T in[48];
        for (int j = 0; j < 48; j++)               /* expansion E and the round key: wiring */
            in[j] = r[OC_BS_E[j]] ^ k[ki[j]];
        BS_FN(oc_bs_s1)(in[0], in[1], in[2], in[3], in[4], in[5],
                        &l[OC_BS_PINV[0]], &l[OC_BS_PINV[1]], &l[OC_BS_PINV[2]], &l[OC_BS_PINV[3]]);
        BS_FN(oc_bs_s2)(in[6], in[7], in[8], in[9], in[10], in[11],
                        &l[OC_BS_PINV[4]], &l[OC_BS_PINV[5]], &l[OC_BS_PINV[6]], &l[OC_BS_PINV[7]]);
        BS_FN(oc_bs_s3)(in[12], in[13], in[14], in[15], in[16], in[17],
                        &l[OC_BS_PINV[8]], &l[OC_BS_PINV[9]], &l[OC_BS_PINV[10]],
                        &l[OC_BS_PINV[11]]);
        BS_FN(oc_bs_s4)(in[18], in[19], in[20], in[21], in[22], in[23],
                        &l[OC_BS_PINV[12]], &l[OC_BS_PINV[13]], &l[OC_BS_PINV[14]],
                        &l[OC_BS_PINV[15]]);
        BS_FN(oc_bs_s5)(in[24], in[25], in[26], in[27], in[28], in[29],
                        &l[OC_BS_PINV[16]], &l[OC_BS_PINV[17]], &l[OC_BS_PINV[18]],
                        &l[OC_BS_PINV[19]]);
        BS_FN(oc_bs_s6)(in[30], in[31], in[32], in[33], in[34], in[35],
                        &l[OC_BS_PINV[20]], &l[OC_BS_PINV[21]], &l[OC_BS_PINV[22]],
                        &l[OC_BS_PINV[23]]);
        BS_FN(oc_bs_s7)(in[36], in[37], in[38], in[39], in[40], in[41],
                        &l[OC_BS_PINV[24]], &l[OC_BS_PINV[25]], &l[OC_BS_PINV[26]],
                        &l[OC_BS_PINV[27]]);
        BS_FN(oc_bs_s8)(in[42], in[43], in[44], in[45], in[46], in[47],
                        &l[OC_BS_PINV[28]], &l[OC_BS_PINV[29]], &l[OC_BS_PINV[30]],
                        &l[OC_BS_PINV[31]]);
        BS_T* t = l;                               /* the halves trade places */
        l = r;
        r = t;
    }
    /* After 16 rounds l is x + 0 again and holds L16 in x[0..31], R16 in x[32..63]; the
       preoutput is R16 L16. */
    for (int j = 0; j < 32; j++) {
        BS_T t = x[j];
        x[j] = x[32 + j];
        x[32 + j] = t;
    }
}

/* Transpose 64 values per word into slices: rows[w * 64 + q] is lane 64 w + q's value (bit 63
   first); s[bit] gets bit `bit` (0 = the most significant) of every lane. */
BS_ATTR static void BS_FN(oc_bs_slices)(uint64_t* rows, BS_T* s) {
    for (int w = 0; w < BS_W; w++) {
        uint64_t* a = rows + 64 * w;
        oc_bs_transpose64(a);
        for (int bit = 0; bit < 64; bit++)
            ((uint64_t*)&s[bit])[w] = a[bit];
    }
}

/* The inverse: slices s back to one 64-bit value per lane in rows. */
BS_ATTR static void BS_FN(oc_bs_rows)(const BS_T* s, uint64_t* rows) {
    for (int w = 0; w < BS_W; w++) {
        uint64_t* a = rows + 64 * w;
        for (int bit = 0; bit < 64; bit++)
            a[bit] = ((const uint64_t*)&s[bit])[w];
        oc_bs_transpose64(a);
    }
}

/* One pass: jobs[0..count), count <= 64 * BS_W, `blocks` the most blocks among them. Each
   lane's message is right-aligned on the steps so that all lanes finish the CBC chain
   together and run the final decrypt-encrypt at once; a lane's state is cleared (by a mask)
   at the step its message starts. */
BS_ATTR static void BS_FN(oc_bs_pass)(const OcBsJob* const* jobs, size_t count, size_t blocks) {
    BS_T key[3][64], x[64], blk[64], keep;
    uint64_t rows[64 * BS_W];
    for (int slot = 0; slot < 3; slot++) {
        for (size_t i = 0; i < 64 * BS_W; i++)
            rows[i] = i < count ? oc_bs_load64(oc_bs_key8(jobs[i], slot)) : 0;
        BS_FN(oc_bs_slices)(rows, key[slot]);
    }
    memset(x, 0, sizeof x);
    for (size_t step = 0; step < blocks; step++) {
        uint64_t* starts = (uint64_t*)&keep;
        for (int w = 0; w < BS_W; w++)
            starts[w] = 0;
        for (size_t i = 0; i < 64 * BS_W; i++) {
            rows[i] = 0;
            if (i >= count)
                continue;
            size_t first = blocks - oc_bs_blocks(jobs[i]);   /* public: from the length */
            if (step < first)
                continue;
            rows[i] = oc_bs_block(jobs[i], step - first);
            if (step == first)
                starts[i / 64] |= (uint64_t)1 << (63 - i % 64);
        }
        keep = ~keep;
        BS_FN(oc_bs_slices)(rows, blk);
        for (int j = 0; j < 64; j++)                /* IP is wiring: block bit OC_BS_IP[j] */
            x[j] = (x[j] & keep) ^ blk[OC_BS_IP[j]];
        BS_FN(oc_bs_des)(x, key[0], OC_BS_KIDX_ENC);
    }
    BS_FN(oc_bs_des)(x, key[1], OC_BS_KIDX_DEC);
    BS_FN(oc_bs_des)(x, key[2], OC_BS_KIDX_ENC);
    for (int j = 0; j < 64; j++)                    /* FP: wiring again */
        blk[j] = x[OC_BS_FP[j]];
    BS_FN(oc_bs_rows)(blk, rows);
    for (size_t i = 0; i < count; i++)
        oc_bs_store64(jobs[i]->out8, rows[i]);
}

/* All jobs, in passes of up to 64 * BS_W lanes; `order` holds the jobs longest first (so a
   pass holds messages of similar lengths and few lanes idle while the longest finishes). */
BS_ATTR static void BS_FN(oc_bs_run)(const OcBsJob* const* order, size_t count) {
    for (size_t at = 0; at < count; at += 64 * BS_W) {
        size_t n = count - at < 64 * BS_W ? count - at : 64 * BS_W;
        BS_FN(oc_bs_pass)(order + at, n, oc_bs_blocks(order[at]));
    }
}
