/*
 * lungwatch_frame.c - see lungwatch_frame.h. C99, no malloc, no mutable globals.
 *
 * CRC-32C: reflected polynomial 0x82F63B78, init and xorout 0xFFFFFFFF, one table lookup per
 * byte. SHA-256 as in FIPS 180-4 (constants: fractional parts of the cube roots of the first
 * 64 primes, and of the square roots of the first 8); HMAC as in RFC 2104 (64-byte block,
 * ipad 0x36, opad 0x5c, keys longer than a block hashed first); HKDF as in RFC 5869 (one
 * expand block: 32 bytes). Version 2's AEAD is in lungwatch_seal.c (libsodium).
 */
#include "lungwatch_frame.h"

#include <string.h>

/* CRC-32C of each byte value from a zero register (generated from the polynomial). */
static const uint32_t CRC32C_TABLE[256] = {
    0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu, 0x35f1141cu,
    0x26a1e7e8u, 0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu, 0x6be22838u, 0x9989ab3bu,
    0x4d43cfd0u, 0xbf284cd3u, 0xac78bf27u, 0x5e133c24u, 0x105ec76fu, 0xe235446cu,
    0xf165b798u, 0x030e349bu, 0xd7c45070u, 0x25afd373u, 0x36ff2087u, 0xc494a384u,
    0x9a879fa0u, 0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u, 0x5d1d08bfu, 0xaf768bbcu,
    0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u, 0x33ed7d2au,
    0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u, 0xaa64d611u, 0x580f5512u,
    0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu, 0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau,
    0x30e349b1u, 0xc288cab2u, 0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu,
    0x1642ae59u, 0xe4292d5au, 0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au,
    0x7da08661u, 0x8fcb0562u, 0x9c9bf696u, 0x6ef07595u, 0x417b1dbcu, 0xb3109ebfu,
    0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u, 0x67dafa54u, 0x95b17957u,
    0xcba24573u, 0x39c9c670u, 0x2a993584u, 0xd8f2b687u, 0x0c38d26cu, 0xfe53516fu,
    0xed03a29bu, 0x1f682198u, 0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u,
    0x96bf4dccu, 0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu,
    0x3ac7f2ebu, 0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u, 0x0f36e6f7u,
    0x61c69362u, 0x93ad1061u, 0x80fde395u, 0x72966096u, 0xa65c047du, 0x5437877eu,
    0x4767748au, 0xb50cf789u, 0xeb1fcbadu, 0x197448aeu, 0x0a24bb5au, 0xf84f3859u,
    0x2c855cb2u, 0xdeeedfb1u, 0xcdbe2c45u, 0x3fd5af46u, 0x7198540du, 0x83f3d70eu,
    0x90a324fau, 0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u, 0xa55230e6u,
    0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu, 0xceb018deu,
    0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu, 0x63cd4b8fu, 0x91a6c88cu,
    0x456cac67u, 0xb7072f64u, 0xa457dc90u, 0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u,
    0xe9141340u, 0x1b7f9043u, 0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu,
    0x92a8fc17u, 0x60c37f14u, 0x73938ce0u, 0x81f80fe3u, 0x55326b08u, 0xa759e80bu,
    0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu, 0xf94ad42fu, 0x0b21572cu,
    0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u, 0xa24bb5a6u, 0x502036a5u,
    0x4370c551u, 0xb11b4652u, 0x65d122b9u, 0x97baa1bau, 0x84ea524eu, 0x7681d14du,
    0x2892ed69u, 0xdaf96e6au, 0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u,
    0x0e330a81u, 0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du,
    0x758fe5d6u, 0x87e466d5u, 0x94b49521u, 0x66df1622u, 0x38cc2a06u, 0xcaa7a905u,
    0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u, 0x0d3d3e1au, 0x1e6dcdeeu, 0xec064eedu,
    0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u, 0xd0ddd530u, 0x0417b1dbu, 0xf67c32d8u,
    0xe52cc12cu, 0x1747422fu, 0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu, 0x5a048dffu,
    0x8ecee914u, 0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
    0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u, 0x07198540u,
    0x590ab964u, 0xab613a67u, 0xb831c993u, 0x4a5a4a90u, 0x9e902e7bu, 0x6cfbad78u,
    0x7fab5e8cu, 0x8dc0dd8fu, 0xe330a81au, 0x115b2b19u, 0x020bd8edu, 0xf0605beeu,
    0x24aa3f05u, 0xd6c1bc06u, 0xc5914ff2u, 0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u,
    0x88d28022u, 0x7ab90321u, 0xae7367cau, 0x5c18e4c9u, 0x4f48173du, 0xbd23943eu,
    0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au, 0xc69f7b69u,
    0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u, 0x988c474du, 0x6ae7c44eu,
    0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u, 0xad7d5351u,
};

static const uint32_t SHA256_K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u,
    0x923f82a4u, 0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u,
    0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u,
    0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u,
    0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u,
    0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
    0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au,
    0x5b9cca4fu, 0x682e6ff3u, 0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u,
    0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

static const uint32_t SHA256_H0[8] = {
    0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
    0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u,
};

uint32_t lwf_crc32c(uint32_t crc, const uint8_t *data, size_t len) {
    uint32_t reg = crc ^ 0xFFFFFFFFu;
    size_t i;
    for (i = 0; i < len; i++) {
        reg = (reg >> 8) ^ CRC32C_TABLE[(reg ^ data[i]) & 0xFFu];
    }
    return reg ^ 0xFFFFFFFFu;
}

/* ---- SHA-256 (FIPS 180-4) ---- */

static uint32_t rotr(uint32_t x, unsigned n) { return (x >> n) | (x << (32u - n)); }

static void sha256_block(uint32_t state[8], const uint8_t block[64]) {
    uint32_t w[64], a, b, c, d, e, f, g, h, t1, t2;
    unsigned i;
    for (i = 0; i < 16; i++) {
        w[i] = ((uint32_t)block[4 * i] << 24) | ((uint32_t)block[4 * i + 1] << 16) |
               ((uint32_t)block[4 * i + 2] << 8) | (uint32_t)block[4 * i + 3];
    }
    for (i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = state[0]; b = state[1]; c = state[2]; d = state[3];
    e = state[4]; f = state[5]; g = state[6]; h = state[7];
    for (i = 0; i < 64; i++) {
        t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i];
        t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    state[0] += a; state[1] += b; state[2] += c; state[3] += d;
    state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

void lwf_sha256_init(lwf_sha256_ctx *ctx) {
    memcpy(ctx->state, SHA256_H0, sizeof ctx->state);
    ctx->total_bytes = 0;
    ctx->used = 0;
}

void lwf_sha256_update(lwf_sha256_ctx *ctx, const uint8_t *data, size_t len) {
    ctx->total_bytes += len;
    while (len > 0) {
        size_t take = 64 - ctx->used;
        if (take > len) take = len;
        memcpy(ctx->block + ctx->used, data, take);
        ctx->used += take;
        data += take;
        len -= take;
        if (ctx->used == 64) {
            sha256_block(ctx->state, ctx->block);
            ctx->used = 0;
        }
    }
}

void lwf_sha256_final(lwf_sha256_ctx *ctx, uint8_t digest[32]) {
    uint64_t bits = ctx->total_bytes * 8u;
    unsigned i;
    ctx->block[ctx->used++] = 0x80u;
    if (ctx->used > 56) {
        memset(ctx->block + ctx->used, 0, 64 - ctx->used);
        sha256_block(ctx->state, ctx->block);
        ctx->used = 0;
    }
    memset(ctx->block + ctx->used, 0, 56 - ctx->used);
    for (i = 0; i < 8; i++) ctx->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_block(ctx->state, ctx->block);
    for (i = 0; i < 8; i++) {
        digest[4 * i] = (uint8_t)(ctx->state[i] >> 24);
        digest[4 * i + 1] = (uint8_t)(ctx->state[i] >> 16);
        digest[4 * i + 2] = (uint8_t)(ctx->state[i] >> 8);
        digest[4 * i + 3] = (uint8_t)ctx->state[i];
    }
}

/* ---- HMAC-SHA256 (RFC 2104) ---- */

void lwf_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                     uint8_t mac[32]) {
    uint8_t block_key[64], pad[64], inner[32];
    lwf_sha256_ctx ctx;
    unsigned i;
    memset(block_key, 0, sizeof block_key);
    if (key_len > 64) {
        lwf_sha256_init(&ctx);
        lwf_sha256_update(&ctx, key, key_len);
        lwf_sha256_final(&ctx, block_key);
    } else if (key_len > 0) {
        memcpy(block_key, key, key_len);
    }
    for (i = 0; i < 64; i++) pad[i] = block_key[i] ^ 0x36u;
    lwf_sha256_init(&ctx);
    lwf_sha256_update(&ctx, pad, 64);
    lwf_sha256_update(&ctx, data, len);
    lwf_sha256_final(&ctx, inner);
    for (i = 0; i < 64; i++) pad[i] = block_key[i] ^ 0x5cu;
    lwf_sha256_init(&ctx);
    lwf_sha256_update(&ctx, pad, 64);
    lwf_sha256_update(&ctx, inner, 32);
    lwf_sha256_final(&ctx, mac);
}

/* ---- v2 session key: HKDF-SHA256 (RFC 5869), one 32-byte block ---- */

void lwf_session_key(const uint8_t *device_key, size_t key_len, uint32_t device_id,
                     uint16_t stream_id, uint32_t session, uint8_t out[LWF_SESSION_KEY_BYTES]) {
    static const char salt[] = "lungwatch v2";
    static const char label[] = "lungwatch v2 session key";
    uint8_t prk[32], info[sizeof label - 1 + 10 + 1];
    size_t n = sizeof label - 1;
    unsigned i;
    lwf_hmac_sha256((const uint8_t *)salt, sizeof salt - 1, device_key, key_len, prk);
    memcpy(info, label, n);
    for (i = 0; i < 4; i++) info[n++] = (uint8_t)(device_id >> (8 * i));
    for (i = 0; i < 2; i++) info[n++] = (uint8_t)(stream_id >> (8 * i));
    for (i = 0; i < 4; i++) info[n++] = (uint8_t)(session >> (8 * i));
    info[n++] = 0x01u; /* T(1) = HMAC(PRK, info || 0x01) */
    lwf_hmac_sha256(prk, sizeof prk, info, n, out);
    memset(prk, 0, sizeof prk);
}

/* ---- frames ---- */

static void put_le(uint8_t *out, uint64_t value, unsigned bytes) {
    unsigned i;
    for (i = 0; i < bytes; i++) out[i] = (uint8_t)(value >> (8 * i));
}

/* The payload is already at out[LWF_HEADER_BYTES]: write the header, tag and CRC. */
static size_t finish_frame(const lwf_header *h, uint8_t frame_type, uint8_t sample_format,
                           uint16_t count, size_t payload_len, const uint8_t *key,
                           size_t key_len, uint8_t *out, size_t out_cap) {
    int tagged = key != NULL && key_len > 0;
    uint8_t flags = (uint8_t)((h->flags & LWF_FLAG_STREAM_START) | (tagged ? LWF_FLAG_AUTH : 0u));
    size_t signed_len = LWF_HEADER_BYTES + payload_len;
    size_t total = signed_len + (tagged ? LWF_TAG_BYTES : 0u) + LWF_CRC_BYTES;
    if (total > out_cap || payload_len > LWF_MAX_PAYLOAD_BYTES) return 0;
    if (h->sample_rate_hz < 1 || h->sample_rate_hz > LWF_MAX_SAMPLE_RATE_HZ) return 0;
    if (h->flags & ~(LWF_FLAG_STREAM_START | LWF_FLAG_AUTH)) return 0;
    out[0] = LWF_MAGIC0;
    out[1] = LWF_MAGIC1;
    out[2] = LWF_VERSION;
    out[3] = frame_type;
    out[4] = flags;
    out[5] = sample_format;
    put_le(out + 6, payload_len, 2);
    put_le(out + 8, h->device_id, 4);
    put_le(out + 12, h->stream_id, 2);
    put_le(out + 14, count, 2);
    put_le(out + 16, h->sequence, 4);
    put_le(out + 20, h->first_sample, 8);
    put_le(out + 28, h->sample_rate_hz, 4);
    if (tagged) {
        uint8_t mac[32];
        lwf_hmac_sha256(key, key_len, out, signed_len, mac);
        memcpy(out + signed_len, mac, LWF_TAG_BYTES);
        signed_len += LWF_TAG_BYTES;
    }
    put_le(out + signed_len, lwf_crc32c(0, out, signed_len), 4);
    return total;
}

static int audio_fits(uint16_t count, unsigned width, size_t out_cap) {
    size_t need = LWF_HEADER_BYTES + (size_t)count * width;
    return count >= 1 && (size_t)count * width <= LWF_MAX_PAYLOAD_BYTES && need <= out_cap;
}

size_t lwf_encode_audio_i16(const lwf_header *h, const int16_t *samples, uint16_t count,
                            const uint8_t *key, size_t key_len, uint8_t *out, size_t out_cap) {
    uint16_t i;
    if (!audio_fits(count, 2, out_cap)) return 0;
    for (i = 0; i < count; i++) put_le(out + LWF_HEADER_BYTES + 2u * i, (uint16_t)samples[i], 2);
    return finish_frame(h, LWF_AUDIO, LWF_INT16, count, 2u * count, key, key_len, out, out_cap);
}

size_t lwf_encode_audio_i24(const lwf_header *h, const int32_t *samples, uint16_t count,
                            const uint8_t *key, size_t key_len, uint8_t *out, size_t out_cap) {
    uint16_t i;
    if (!audio_fits(count, 3, out_cap)) return 0;
    for (i = 0; i < count; i++) {
        if (samples[i] < -8388608 || samples[i] > 8388607) return 0;
        put_le(out + LWF_HEADER_BYTES + 3u * i, (uint32_t)samples[i] & 0xFFFFFFu, 3);
    }
    return finish_frame(h, LWF_AUDIO, LWF_INT24, count, 3u * count, key, key_len, out, out_cap);
}

size_t lwf_encode_audio_f32(const lwf_header *h, const float *samples, uint16_t count,
                            const uint8_t *key, size_t key_len, uint8_t *out, size_t out_cap) {
    uint16_t i;
    uint32_t bits;
    if (!audio_fits(count, 4, out_cap)) return 0;
    for (i = 0; i < count; i++) {
        memcpy(&bits, &samples[i], sizeof bits); /* IEEE 754 binary32 assumed */
        put_le(out + LWF_HEADER_BYTES + 4u * i, bits, 4);
    }
    return finish_frame(h, LWF_AUDIO, LWF_FLOAT32, count, 4u * count, key, key_len, out, out_cap);
}

size_t lwf_encode_status(const lwf_header *h, const lwf_status *status, const uint8_t *key,
                         size_t key_len, uint8_t *out, size_t out_cap) {
    uint8_t bits = 0;
    if (out_cap < LWF_HEADER_BYTES + 8u) return 0;
    if (status->battery_percent > 100 && status->battery_percent != LWF_BATTERY_UNKNOWN) return 0;
    if (status->off_body >= 0) bits = (uint8_t)(0x02u | (status->off_body ? 0x01u : 0u));
    out[LWF_HEADER_BYTES] = status->battery_percent;
    out[LWF_HEADER_BYTES + 1] = bits;
    put_le(out + LWF_HEADER_BYTES + 2, (uint16_t)status->gain_cdb, 2);
    put_le(out + LWF_HEADER_BYTES + 4, status->clipped_samples, 4);
    return finish_frame(h, LWF_STATUS, LWF_FORMAT_NONE, 0, 8, key, key_len, out, out_cap);
}

size_t lwf_encode_heartbeat(const lwf_header *h, const uint8_t *key, size_t key_len,
                            uint8_t *out, size_t out_cap) {
    return finish_frame(h, LWF_HEARTBEAT, LWF_FORMAT_NONE, 0, 0, key, key_len, out, out_cap);
}

size_t lwf_encode_device_info(const lwf_header *h, const lwf_device_info *info,
                              const uint8_t *key, size_t key_len, uint8_t *out, size_t out_cap) {
    size_t model_len = 0;
    while (info->model != NULL && info->model[model_len] != '\0') {
        if (++model_len > LWF_MAX_MODEL_BYTES) return 0;
    }
    if (out_cap < LWF_HEADER_BYTES + 4u + model_len) return 0;
    out[LWF_HEADER_BYTES] = info->firmware_major;
    out[LWF_HEADER_BYTES + 1] = info->firmware_minor;
    out[LWF_HEADER_BYTES + 2] = info->firmware_patch;
    out[LWF_HEADER_BYTES + 3] = info->hardware_revision;
    if (model_len > 0) memcpy(out + LWF_HEADER_BYTES + 4, info->model, model_len);
    return finish_frame(h, LWF_DEVICE_INFO, LWF_FORMAT_NONE, 0, 4u + model_len, key, key_len,
                        out, out_cap);
}
