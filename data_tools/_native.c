/* Compiled kernels for the filter stage's per-word work (see data_tools/native.py).
 *
 * Each function reads a str in place (its 1-, 2- or 4-byte code points), never builds a Python
 * object per word, and computes exactly what the numpy/Python code beside it computes:
 *
 *   gopher_words(text, punct, stop_words)   -> the counts Gopher's quality rules compare
 *   gopher_ngrams(text, top, dup)           -> the first repetition n-gram rule that fails, or None
 *   gopher_duplicates(text)                 -> repeated paragraphs and lines, and their characters
 *   minhash_input(text, n, punct, wide)     -> (exact hash, word n-gram shingle hashes as bytes)
 *   normalize_whitespace(text, spaces, controls) -> clean_text's whitespace step
 *
 * Words are str.split()'s (runs of Py_UNICODE_ISSPACE). Lengths are in code points. Hashes are
 * XXH64 (seed 0) of UTF-8, as the xxhash package computes them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "data_tools/_native.c reads XXH64 input words little-endian"
#endif

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t len;
} Text;

static int text_of(PyObject *obj, Text *t) {
    if (!PyUnicode_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "expected a str");
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(obj) < 0)
        return -1;
#endif
    t->kind = PyUnicode_KIND(obj);
    t->data = PyUnicode_DATA(obj);
    t->len = PyUnicode_GET_LENGTH(obj);
    return 0;
}

#define CH(t, i) PyUnicode_READ((t)->kind, (t)->data, (i))

/* str.split(): the spans of the runs of non-whitespace, as (start, end) pairs in *spans. */
static Py_ssize_t split_spans(const Text *t, Py_ssize_t **spans) {
    Py_ssize_t cap = t->len / 2 + 1, n = 0, i = 0;
    Py_ssize_t *s = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * cap);
    if (!s) {
        PyErr_NoMemory();
        return -1;
    }
    while (i < t->len) {
        while (i < t->len && Py_UNICODE_ISSPACE(CH(t, i)))
            i++;
        if (i == t->len)
            break;
        s[2 * n] = i;
        while (i < t->len && !Py_UNICODE_ISSPACE(CH(t, i)))
            i++;
        s[2 * n + 1] = i;
        n++;
    }
    *spans = s;
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* XXH64 (Collet's xxHash, 64-bit variant), seed 0 */

static const uint64_t XP1 = 0x9E3779B185EBCA87ULL, XP2 = 0xC2B2AE3D27D4EB4FULL,
                      XP3 = 0x165667B19E3779F9ULL, XP4 = 0x85EBCA77C2B2AE63ULL,
                      XP5 = 0x27D4EB2F165667C5ULL;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint64_t xx_round(uint64_t acc, uint64_t in) {
    acc += in * XP2;
    return rotl64(acc, 31) * XP1;
}

static inline uint64_t xx_merge(uint64_t acc, uint64_t v) {
    acc ^= xx_round(0, v);
    return acc * XP1 + XP4;
}

static uint64_t xxh64(const uint8_t *p, size_t len) {
    const uint8_t *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = XP1 + XP2, v2 = XP2, v3 = 0, v4 = (uint64_t)0 - XP1;
        const uint8_t *limit = end - 32;
        do {
            v1 = xx_round(v1, rd64(p));
            v2 = xx_round(v2, rd64(p + 8));
            v3 = xx_round(v3, rd64(p + 16));
            v4 = xx_round(v4, rd64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xx_merge(h, v1);
        h = xx_merge(h, v2);
        h = xx_merge(h, v3);
        h = xx_merge(h, v4);
    } else {
        h = XP5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= xx_round(0, rd64(p));
        h = rotl64(h, 27) * XP1 + XP4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)rd32(p) * XP1;
        h = rotl64(h, 23) * XP2 + XP3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * XP5;
        h = rotl64(h, 11) * XP1;
        p++;
    }
    h ^= h >> 33;
    h *= XP2;
    h ^= h >> 29;
    h *= XP3;
    h ^= h >> 32;
    return h;
}

static PyObject *py_xxh64(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t h = xxh64(b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(h);
}

/* ------------------------------------------------------------------------------------------ */
/* Gopher quality: per word, in one pass */

/* A small set of code points: a table below 128, a list above. */
typedef struct {
    unsigned char ascii[128];
    Py_UCS4 wide[64];
    int n_wide;
} CharSet;

static int charset_of(PyObject *chars, CharSet *cs) {
    Text t;
    if (text_of(chars, &t) < 0)
        return -1;
    memset(cs, 0, sizeof(*cs));
    for (Py_ssize_t i = 0; i < t.len; i++) {
        Py_UCS4 c = CH(&t, i);
        if (c < 128) {
            cs->ascii[c] = 1;
        } else {
            if (cs->n_wide == 64) {
                PyErr_SetString(PyExc_ValueError, "at most 64 non-ASCII characters in a character set");
                return -1;
            }
            cs->wide[cs->n_wide++] = c;
        }
    }
    return 0;
}

static inline int in_set(const CharSet *cs, Py_UCS4 c) {
    if (c < 128)
        return cs->ascii[c];
    for (int k = 0; k < cs->n_wide; k++)
        if (cs->wide[k] == c)
            return 1;
    return 0;
}

/* gopher_words(text, punct, stop_words) -> (words, chars, symbol_words, symbol_chars,
 * no_letter_words, stop_words_found).
 *
 * A symbol word is made only of ``punct``; a no-letter word has no character str.isalpha
 * accepts; a stop word is found when a word, lowercased with its ``punct`` ends stripped, equals
 * one of ``stop_words`` (a tuple of at most 64 str; the count is of distinct stop words). */
static PyObject *gopher_words(PyObject *self, PyObject *args) {
    PyObject *text, *punct, *stop;
    if (!PyArg_ParseTuple(args, "UUO!", &text, &punct, &PyTuple_Type, &stop))
        return NULL;
    Text t;
    CharSet p;
    if (text_of(text, &t) < 0 || charset_of(punct, &p) < 0)
        return NULL;
    Py_ssize_t n_stop = PyTuple_GET_SIZE(stop);
    if (n_stop > 64) {
        PyErr_SetString(PyExc_ValueError, "at most 64 stop words");
        return NULL;
    }
    /* ASCII stop words compared as bytes; the others can only equal a non-ASCII word */
    const char *stop_ascii[64];
    Py_ssize_t stop_len[64];
    for (Py_ssize_t k = 0; k < n_stop; k++) {
        PyObject *w = PyTuple_GET_ITEM(stop, k);
        if (!PyUnicode_Check(w)) {
            PyErr_SetString(PyExc_TypeError, "stop words must be str");
            return NULL;
        }
        stop_ascii[k] = PyUnicode_IS_ASCII(w) ? (const char *)PyUnicode_DATA(w) : NULL;
        stop_len[k] = PyUnicode_GET_LENGTH(w);
    }
    long long words = 0, chars = 0, symbol_words = 0, symbol_chars = 0, no_letter = 0;
    uint64_t found = 0;
    char buf[64];
    Py_ssize_t i = 0;
    while (i < t.len) {
        while (i < t.len && Py_UNICODE_ISSPACE(CH(&t, i)))
            i++;
        if (i == t.len)
            break;
        Py_ssize_t s = i;
        int all_punct = 1, letter = 0, ascii = 1;
        for (; i < t.len; i++) {
            Py_UCS4 c = CH(&t, i);
            if (Py_UNICODE_ISSPACE(c))
                break;
            if (all_punct && !in_set(&p, c))
                all_punct = 0;
            if (!letter && Py_UNICODE_ISALPHA(c))
                letter = 1;
            if (c >= 128)
                ascii = 0;
        }
        Py_ssize_t e = i, len = e - s;
        words++;
        chars += len;
        if (!letter)
            no_letter++;
        if (all_punct) {
            symbol_words++;
            symbol_chars += len;
            continue; /* empty once stripped: no stop word */
        }
        if (!n_stop)
            continue;
        Py_ssize_t a = s, b = e;
        while (a < b && in_set(&p, CH(&t, a)))
            a++;
        while (b > a && in_set(&p, CH(&t, b - 1)))
            b--;
        Py_ssize_t core = b - a;
        if (!ascii) {  /* non-ASCII only in the stripped ends ("\u201cthe\u201d") */
            ascii = 1;
            for (Py_ssize_t j = a; j < b && ascii; j++)
                ascii = CH(&t, j) < 128;
        }
        if (ascii) {  /* an ASCII core: lowercased byte by byte */
            if (core > (Py_ssize_t)sizeof(buf))
                continue;  /* longer than any stop word (native.py checks) */
            for (Py_ssize_t j = 0; j < core; j++) {
                Py_UCS4 c = CH(&t, a + j);
                buf[j] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            }
            for (Py_ssize_t k = 0; k < n_stop; k++)
                if (stop_ascii[k] && stop_len[k] == core && memcmp(stop_ascii[k], buf, (size_t)core) == 0)
                    found |= (uint64_t)1 << k;
        } else {
            /* full Unicode lowercasing, as str.lower() does it */
            PyObject *sub = PyUnicode_Substring(text, a, b);
            PyObject *low = sub ? PyObject_CallMethod(sub, "lower", NULL) : NULL;
            Py_XDECREF(sub);
            if (!low)
                return NULL;
            for (Py_ssize_t k = 0; k < n_stop; k++) {
                int eq = PyUnicode_Compare(low, PyTuple_GET_ITEM(stop, k));
                if (eq == 0)
                    found |= (uint64_t)1 << k;
                else if (eq == -1 && PyErr_Occurred()) {
                    Py_DECREF(low);
                    return NULL;
                }
            }
            Py_DECREF(low);
        }
    }
    int n_found = 0;
    for (; found; found &= found - 1)
        n_found++;
    return Py_BuildValue("(LLLLLi)", words, chars, symbol_words, symbol_chars, no_letter, n_found);
}

/* ------------------------------------------------------------------------------------------ */
/* Gopher repetition: n-gram rules */

static const uint64_t MIX = 0x9E3779B97F4A7C15ULL;

static inline size_t slot_of(uint64_t h, int bits) { return (size_t)((h * MIX) >> (64 - bits)); }

/* FNV-1a over a span's code points (its identity is checked by comparing them, not the hash) */
static uint64_t span_hash(const Text *t, Py_ssize_t s, Py_ssize_t e) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (Py_ssize_t i = s; i < e; i++)
        h = (h ^ CH(t, i)) * 0x100000001b3ULL;
    return h;
}

/* ids[w] = the index of the first span with span w's content (so span w repeats an earlier one
 * iff ids[w] != w), through an open-addressing table of 2^bits >= 2n slots. 0 or -1 (no memory). */
static int span_ids(const Text *t, const Py_ssize_t *spans, Py_ssize_t n, uint64_t *ids) {
    int bits = 4;
    while (((size_t)1 << bits) < (size_t)n * 2)
        bits++;
    size_t cap = (size_t)1 << bits, mask = cap - 1;
    int64_t *slots = PyMem_Malloc(sizeof(int64_t) * cap); /* -1 empty, else a span index */
    if (!slots) {
        PyErr_NoMemory();
        return -1;
    }
    memset(slots, 0xff, sizeof(int64_t) * cap);
    size_t width = (size_t)t->kind;
    const char *data = t->data;
    for (Py_ssize_t w = 0; w < n; w++) {
        Py_ssize_t s = spans[2 * w], e = spans[2 * w + 1];
        for (size_t j = slot_of(span_hash(t, s, e), bits);; j = (j + 1) & mask) {
            int64_t o = slots[j];
            if (o < 0) {
                slots[j] = w;
                ids[w] = (uint64_t)w;
                break;
            }
            Py_ssize_t os = spans[2 * o], oe = spans[2 * o + 1];
            if (oe - os == e - s && memcmp(data + os * width, data + s * width, (size_t)(e - s) * width) == 0) {
                ids[w] = (uint64_t)o;
                break;
            }
        }
    }
    PyMem_Free(slots);
    return 0;
}

typedef struct {
    uint64_t key;
    int64_t count; /* 0: empty */
    int64_t first;
} GramSlot;

/* gopher_ngrams(text, top, dup) -> "top_{k}gram", "dup_{k}gram" or None.
 *
 * ``top`` and ``dup`` are tuples of (k, threshold). The rules are those of GopherRepetition's
 * numpy code, over the same 64-bit k-gram keys (a word's id is the position of its first
 * occurrence; a k-gram's key is built from its (k-1)-gram's), checked in the same order:
 * for k = 2, 3, ...: the most frequent k-gram's characters (the first seen of the tied ones,
 * times its count) over all word characters, then the characters of the words covered by any
 * k-gram that occurs more than once. */
static PyObject *gopher_ngrams(PyObject *self, PyObject *args) {
    PyObject *text, *top, *dup;
    if (!PyArg_ParseTuple(args, "UO!O!", &text, &PyTuple_Type, &top, &PyTuple_Type, &dup))
        return NULL;
    Text t;
    if (text_of(text, &t) < 0)
        return NULL;
    /* the thresholds by k: 0 none */
    double top_thr[65] = {0}, dup_thr[65] = {0};
    int has_top[65] = {0}, has_dup[65] = {0};
    int need = 1;
    for (int which = 0; which < 2; which++) {
        PyObject *rules = which ? dup : top;
        for (Py_ssize_t r = 0; r < PyTuple_GET_SIZE(rules); r++) {
            int k;
            double thr;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(rules, r), "id", &k, &thr))
                return NULL;
            if (k < 1 || k > 64) {
                PyErr_Format(PyExc_ValueError, "n-gram rule for k=%d: expected 1 <= k <= 64", k);
                return NULL;
            }
            if (which) {
                has_dup[k] = 1;
                dup_thr[k] = thr;
            } else {
                has_top[k] = 1;
                top_thr[k] = thr;
            }
            if (k > need)
                need = k;
        }
    }
    Py_ssize_t *spans = NULL;
    Py_ssize_t n = split_spans(&t, &spans);
    if (n < 0)
        return NULL;
    PyObject *result = NULL;
    uint64_t *ids = NULL, *keys = NULL;
    int64_t *cum = NULL, *slot_at = NULL;
    GramSlot *table = NULL;
    if (n == 0)
        goto none;
    ids = PyMem_Malloc(sizeof(uint64_t) * n);
    keys = PyMem_Malloc(sizeof(uint64_t) * n);
    cum = PyMem_Malloc(sizeof(int64_t) * (n + 1));
    slot_at = PyMem_Malloc(sizeof(int64_t) * n);
    int bits = 4;
    while (((size_t)1 << bits) < (size_t)n * 2)
        bits++;
    size_t cap = (size_t)1 << bits, mask = cap - 1;
    table = PyMem_Malloc(sizeof(GramSlot) * cap);
    if (!ids || !keys || !cum || !slot_at || !table) {
        PyErr_NoMemory();
        goto done;
    }
    /* word ids: the index of each word's first occurrence */
    if (span_ids(&t, spans, n, ids) < 0)
        goto done;
    cum[0] = 0;
    for (Py_ssize_t w = 0; w < n; w++)
        cum[w + 1] = cum[w] + (spans[2 * w + 1] - spans[2 * w]);
    int64_t total = cum[n];
    if (total == 0)
        goto none;
    memcpy(keys, ids, sizeof(uint64_t) * n);
    int last = need < n ? need : (int)n;
    for (int k = 2; k <= last; k++) {
        Py_ssize_t m = n - k + 1; /* k-grams */
        for (Py_ssize_t i = 0; i < m; i++)
            keys[i] = (keys[i] ^ (keys[i] >> 31)) * MIX + ids[i + k - 1] + 1;
        if (!has_top[k] && !has_dup[k])
            continue;
        memset(table, 0, sizeof(GramSlot) * cap);
        for (Py_ssize_t i = 0; i < m; i++) {
            uint64_t key = keys[i];
            size_t j = slot_of(key, bits);
            while (table[j].count && table[j].key != key)
                j = (j + 1) & mask;
            if (!table[j].count) {
                table[j].key = key;
                table[j].first = i;
            }
            table[j].count++;
            slot_at[i] = (int64_t)j;
        }
        if (has_top[k]) {
            int64_t best = 0, first = 0;
            for (size_t j = 0; j < cap; j++)
                if (table[j].count > best || (table[j].count == best && best && table[j].first < first)) {
                    best = table[j].count;
                    first = table[j].first;
                }
            if (best > 1 && (double)((cum[first + k] - cum[first]) * best) / (double)total > top_thr[k]) {
                result = PyUnicode_FromFormat("top_%dgram", k);
                goto done;
            }
        }
        if (has_dup[k]) {
            int64_t covered = 0;
            Py_ssize_t until = 0;
            for (Py_ssize_t i = 0; i < n; i++) {
                if (i < m && table[slot_at[i]].count > 1)
                    until = i + k;
                if (i < until)
                    covered += cum[i + 1] - cum[i];
            }
            double frac = (double)covered / (double)total;
            if (frac > dup_thr[k]) {
                result = PyUnicode_FromFormat("dup_%dgram", k);
                goto done;
            }
            /* words under a repeated longer n-gram are under repeated k-grams too: the longer
             * fractions can only be smaller; stop when no rule left can fail */
            int more = 0;
            for (int kk = k + 1; kk <= last; kk++)
                if (has_top[kk] || (has_dup[kk] && frac > dup_thr[kk]))
                    more = 1;
            if (!more)
                break;
        }
    }
none:
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(spans);
    PyMem_Free(ids);
    PyMem_Free(keys);
    PyMem_Free(cum);
    PyMem_Free(slot_at);
    PyMem_Free(table);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* MinHash input */

static inline size_t put_utf8(uint8_t *o, Py_UCS4 c) {
    if (c < 0x80) {
        o[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (uint8_t)(0xC0 | (c >> 6));
        o[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (c >> 12));
        o[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (c >> 18));
    o[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

/* minhash_input(text, n, punct, wide_punct) -> (exact hash, shingles) or None.
 *
 * The words are dedup.words(text)'s: the lowercased text (str.lower(); ASCII text lowercased
 * byte by byte), with every character of ``punct`` and ``wide_punct`` a break, split on
 * whitespace. The exact hash is XXH64 of the words joined by single spaces; the shingles are the
 * uint64 hashes dedup.shingle_hashes combines from the words' XXH64 (order-sensitive, mod 2^64),
 * n words each (all words when there are fewer), as native-endian bytes. None when the text has
 * no words or holds a lone surrogate (the caller takes the Python path: it hashes the text itself,
 * or raises as str.encode does). */
static PyObject *minhash_input(PyObject *self, PyObject *args) {
    PyObject *text, *punct, *wide, *lowered = NULL;
    int ngram;
    if (!PyArg_ParseTuple(args, "UiUU", &text, &ngram, &punct, &wide))
        return NULL;
    if (ngram < 1) {
        PyErr_SetString(PyExc_ValueError, "n-gram length must be positive");
        return NULL;
    }
    CharSet brk;
    if (charset_of(punct, &brk) < 0)
        return NULL;
    {
        CharSet w;
        if (charset_of(wide, &w) < 0)
            return NULL;
        for (int k = 0; k < w.n_wide; k++) {
            if (brk.n_wide == 64) {
                PyErr_SetString(PyExc_ValueError, "at most 64 non-ASCII punctuation characters");
                return NULL;
            }
            brk.wide[brk.n_wide++] = w.wide[k];
        }
        for (int c = 0; c < 128; c++)
            brk.ascii[c] |= w.ascii[c];
    }
    int ascii = PyUnicode_IS_ASCII(text);
    if (!ascii) {
        lowered = PyObject_CallMethod(text, "lower", NULL);
        if (!lowered)
            return NULL;
        text = lowered;
    }
    Text t;
    if (text_of(text, &t) < 0) {
        Py_XDECREF(lowered);
        return NULL;
    }
    PyObject *result = NULL;
    uint8_t *norm = PyMem_Malloc((size_t)t.len * 4 + 1); /* the words joined, UTF-8 */
    uint64_t *wh = PyMem_Malloc(sizeof(uint64_t) * (size_t)(t.len / 2 + 1));
    if (!norm || !wh) {
        PyErr_NoMemory();
        goto done;
    }
    size_t pos = 0;
    Py_ssize_t n = 0, i = 0;
    while (i < t.len) {
        Py_UCS4 c = CH(&t, i);
        if (Py_UNICODE_ISSPACE(c) || in_set(&brk, c)) {
            i++;
            continue;
        }
        if (n)
            norm[pos++] = ' ';
        size_t start = pos;
        for (; i < t.len; i++) {
            c = CH(&t, i);
            if (Py_UNICODE_ISSPACE(c) || in_set(&brk, c))
                break;
            if (ascii) {
                norm[pos++] = (uint8_t)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            } else {
                if (c >= 0xD800 && c < 0xE000)
                    goto none; /* not encodable */
                pos += put_utf8(norm + pos, c);
            }
        }
        wh[n++] = xxh64(norm + start, pos - start);
    }
    if (n == 0)
        goto none;
    {
        Py_ssize_t k = ngram < n ? ngram : n, m = n - k + 1;
        PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)sizeof(uint64_t) * m);
        if (!out)
            goto done;
        uint64_t *h = (uint64_t *)PyBytes_AS_STRING(out);
        for (Py_ssize_t a = 0; a < m; a++) {
            uint64_t v = wh[a];
            for (Py_ssize_t j = 1; j < k; j++)
                v = v * MIX + wh[a + j];
            h[a] = v;
        }
        result = Py_BuildValue("(KN)", (unsigned long long)xxh64(norm, pos), out);
    }
    goto done;
none:
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(norm);
    PyMem_Free(wh);
    Py_XDECREF(lowered);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Gopher repetition: duplicate paragraphs and lines */

/* Drops the spans that are empty once stripped of whitespace (str.strip()) and strips the rest,
 * in place; returns how many are left. */
static Py_ssize_t strip_spans(const Text *t, Py_ssize_t *spans, Py_ssize_t n) {
    Py_ssize_t kept = 0;
    for (Py_ssize_t w = 0; w < n; w++) {
        Py_ssize_t s = spans[2 * w], e = spans[2 * w + 1];
        while (s < e && Py_UNICODE_ISSPACE(CH(t, s)))
            s++;
        while (e > s && Py_UNICODE_ISSPACE(CH(t, e - 1)))
            e--;
        if (s < e) {
            spans[2 * kept] = s;
            spans[2 * kept + 1] = e;
            kept++;
        }
    }
    return kept;
}

/* (items, items repeating an earlier one, characters in those repeats) */
static int repeats(const Text *t, const Py_ssize_t *spans, Py_ssize_t n, long long out[3]) {
    uint64_t *ids = PyMem_Malloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    if (!ids) {
        PyErr_NoMemory();
        return -1;
    }
    if (span_ids(t, spans, n, ids) < 0) {
        PyMem_Free(ids);
        return -1;
    }
    out[0] = n;
    out[1] = out[2] = 0;
    for (Py_ssize_t w = 0; w < n; w++)
        if (ids[w] != (uint64_t)w) {
            out[1]++;
            out[2] += spans[2 * w + 1] - spans[2 * w];
        }
    PyMem_Free(ids);
    return 0;
}

/* gopher_duplicates(text) -> (paragraphs, repeated paragraphs, their characters, lines, repeated
 * lines, their characters). Paragraphs are the pieces between runs of two or more '\n', lines
 * the pieces between single '\n'; each is stripped and the empty ones are left out, as
 * GopherRepetition's Python code does; a repeat is an item equal to an earlier one. */
static PyObject *gopher_duplicates(PyObject *self, PyObject *arg) {
    Text t;
    if (text_of(arg, &t) < 0)
        return NULL;
    Py_ssize_t *spans = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * (size_t)(t.len + 1));
    if (!spans)
        return PyErr_NoMemory();
    long long para[3], line[3];
    Py_ssize_t n = 0, start = 0, i = 0;
    while (i < t.len) { /* paragraphs */
        if (CH(&t, i) == '\n' && i + 1 < t.len && CH(&t, i + 1) == '\n') {
            spans[2 * n] = start;
            spans[2 * n + 1] = i;
            n++;
            while (i < t.len && CH(&t, i) == '\n')
                i++;
            start = i;
        } else {
            i++;
        }
    }
    spans[2 * n] = start;
    spans[2 * n + 1] = t.len;
    n = strip_spans(&t, spans, n + 1);
    if (repeats(&t, spans, n, para) < 0)
        goto fail;
    n = 0;
    start = 0;
    for (i = 0; i < t.len; i++) /* lines */
        if (CH(&t, i) == '\n') {
            spans[2 * n] = start;
            spans[2 * n + 1] = i;
            n++;
            start = i + 1;
        }
    spans[2 * n] = start;
    spans[2 * n + 1] = t.len;
    n = strip_spans(&t, spans, n + 1);
    if (repeats(&t, spans, n, line) < 0)
        goto fail;
    PyMem_Free(spans);
    return Py_BuildValue("(LLLLLL)", para[0], para[1], para[2], line[0], line[1], line[2]);
fail:
    PyMem_Free(spans);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Cleaning: whitespace */

/* normalize_whitespace(text, spaces, controls) -> str: '\r\n' and '\r' become '\n', the
 * ``controls`` go, every run of ``spaces`` becomes one ' ', each line is stripped (str.strip()),
 * runs of three or more '\n' become two and the whole is stripped: clean.clean_text's
 * whitespace step. */
static PyObject *normalize_whitespace(PyObject *self, PyObject *args) {
    PyObject *text, *spaces, *controls;
    if (!PyArg_ParseTuple(args, "UUU", &text, &spaces, &controls))
        return NULL;
    Text t;
    CharSet sp, ctl;
    if (text_of(text, &t) < 0 || charset_of(spaces, &sp) < 0 || charset_of(controls, &ctl) < 0)
        return NULL;
    Py_UCS4 *a = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)(t.len + 1));
    Py_UCS4 *b = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)(t.len + 1));
    if (!a || !b) {
        PyMem_Free(a);
        PyMem_Free(b);
        return PyErr_NoMemory();
    }
    Py_ssize_t n = 0;
    int run = 0;
    for (Py_ssize_t i = 0; i < t.len; i++) {
        Py_UCS4 c = CH(&t, i);
        if (c == '\r') {
            c = '\n';
            if (i + 1 < t.len && CH(&t, i + 1) == '\n')
                i++;
        }
        if (in_set(&ctl, c))
            continue; /* gone before the space runs are found: it joins the runs either side */
        if (in_set(&sp, c)) {
            if (!run)
                a[n++] = ' ';
            run = 1;
            continue;
        }
        run = 0;
        a[n++] = c;
    }
    /* lines stripped; between two non-empty lines one '\n' more than the empty lines between
     * them, at most two; nothing before the first or after the last */
    Py_ssize_t m = 0, breaks = 0, s = 0;
    int any = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (i < n && a[i] != '\n')
            continue;
        Py_ssize_t e = i;
        while (s < e && Py_UNICODE_ISSPACE(a[s]))
            s++;
        while (e > s && Py_UNICODE_ISSPACE(a[e - 1]))
            e--;
        if (s < e) {
            if (any)
                for (Py_ssize_t k = 0; k < (breaks < 2 ? breaks : 2); k++)
                    b[m++] = '\n';
            memcpy(b + m, a + s, sizeof(Py_UCS4) * (size_t)(e - s));
            m += e - s;
            any = 1;
            breaks = 0;
        }
        breaks++;
        s = i + 1;
    }
    PyObject *out = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, b, m);
    PyMem_Free(a);
    PyMem_Free(b);
    return out;
}

static PyMethodDef methods[] = {
    {"gopher_words", gopher_words, METH_VARARGS, "Counts for Gopher's quality rules, in one pass."},
    {"gopher_ngrams", gopher_ngrams, METH_VARARGS, "The first failing Gopher n-gram repetition rule, or None."},
    {"gopher_duplicates", gopher_duplicates, METH_O, "Paragraph and line repeat counts for Gopher's repetition rules."},
    {"normalize_whitespace", normalize_whitespace, METH_VARARGS, "clean_text's whitespace step."},
    {"minhash_input", minhash_input, METH_VARARGS, "(exact hash, shingle hashes as bytes) of a text, or None."},
    {"xxh64", py_xxh64, METH_O, "XXH64, seed 0, of a bytes-like object."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "Compiled filter kernels.", -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
