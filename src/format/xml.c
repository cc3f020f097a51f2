/* The XML reader behind xml.h. One forward pass over the input with an explicit stack of
 * open elements (no recursion, so nesting costs no C stack), everything it keeps allocated
 * from one arena that is freed at once. */
#include "format/xml.h"

#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

/* ---- arena ---- */

struct chunk {
  struct chunk *next;
  size_t used, cap;
  _Alignas(max_align_t) unsigned char data[];
};

#define TSR_XML_CHUNK ((size_t)64 << 10)

struct tsr_xml_doc {
  struct chunk *chunks;
  const struct tsr_xml_node *root;
};

static void *arena_alloc(struct tsr_xml_doc *doc, size_t size) {
  size = (size + 15) & ~(size_t)15;
  struct chunk *c = doc->chunks;
  if (!c || c->cap - c->used < size) {
    size_t cap = size > TSR_XML_CHUNK ? size : TSR_XML_CHUNK;
    if (!(c = tsr_malloc(sizeof *c + cap)))
      return NULL;
    c->cap = cap;
    c->used = 0;
    c->next = doc->chunks;
    doc->chunks = c;
  }
  void *p = c->data + c->used;
  c->used += size;
  return p;
}

void tsr_xml_free(struct tsr_xml_doc *doc) {
  if (!doc)
    return;
  for (struct chunk *c = doc->chunks, *next; c; c = next) {
    next = c->next;
    tsr_free(c);
  }
  tsr_free(doc);
}

/* ---- parser ---- */

/* A run of character data of an open element; joined when the element closes. */
struct segment {
  const char *s;
  size_t len;
  struct segment *next;
};

struct open_element {
  struct tsr_xml_node *node;
  struct tsr_xml_node *last_child;
  struct segment *first, *last;
  size_t nseg, text_len;
};

struct parser {
  const char *src, *p, *end;
  struct tsr_xml_doc *doc;
  struct open_element stack[TSR_XML_MAX_DEPTH];
  size_t depth, elements;
  struct tsr_xml_attr attrs[TSR_XML_MAX_ATTRIBUTES];
  const char *error_at;
};

static tessera_status fail(struct parser *ps, const char *at, const char *what) {
  size_t line = 1;
  for (const char *q = ps->src; q < at && q < ps->end; q++)
    line += *q == '\n';
  return tsr_error(TESSERA_E_FORMAT, "XML line %zu: %s", line, what);
}

static tessera_status nomem(void) {
  return tsr_error(TESSERA_E_NOMEM, "out of memory for the XML document");
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static void skip_ws(struct parser *ps) {
  while (ps->p < ps->end && is_ws(*ps->p))
    ps->p++;
}

static bool starts(const struct parser *ps, const char *lit) {
  size_t n = strlen(lit);
  return (size_t)(ps->end - ps->p) >= n && memcmp(ps->p, lit, n) == 0;
}

/* The first occurrence of lit at or after p, or NULL. */
static const char *find(const char *p, const char *end, const char *lit) {
  size_t n = strlen(lit);
  while ((size_t)(end - p) >= n) {
    const char *q = memchr(p, lit[0], (size_t)(end - p) - n + 1);
    if (!q)
      return NULL;
    if (memcmp(q, lit, n) == 0)
      return q;
    p = q + 1;
  }
  return NULL;
}

static bool name_start(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == ':' || c >= 0x80;
}

static bool name_char(unsigned char c) {
  return name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

static tessera_status parse_name(struct parser *ps, const char **out) {
  const char *b = ps->p;
  if (ps->p >= ps->end || !name_start((unsigned char)*ps->p))
    return fail(ps, ps->p, "a name was expected");
  while (ps->p < ps->end && name_char((unsigned char)*ps->p))
    ps->p++;
  char *n = arena_alloc(ps->doc, (size_t)(ps->p - b) + 1);
  if (!n)
    return nomem();
  memcpy(n, b, (size_t)(ps->p - b));
  n[ps->p - b] = 0;
  *out = n;
  return TESSERA_OK;
}

static size_t put_utf8(char *dst, uint32_t cp) {
  if (cp < 0x80) {
    dst[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    dst[0] = (char)(0xC0 | (cp >> 6));
    dst[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    dst[0] = (char)(0xE0 | (cp >> 12));
    dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    dst[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  dst[0] = (char)(0xF0 | (cp >> 18));
  dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  dst[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* The reference at *pp ('&' ... ';') written to dst; its UTF-8 is never longer than the
 * reference itself, so decoding in a buffer of the raw length is safe. */
static bool decode_reference(const char **pp, const char *end, char *dst, size_t *n) {
  static const struct {
    const char *name;
    char c;
  } named[] = {{"lt;", '<'}, {"gt;", '>'}, {"amp;", '&'}, {"quot;", '"'}, {"apos;", '\''}};
  const char *p = *pp + 1;
  for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
    size_t len = strlen(named[i].name);
    if ((size_t)(end - p) >= len && memcmp(p, named[i].name, len) == 0) {
      *dst = named[i].c;
      *n = 1;
      *pp = p + len;
      return true;
    }
  }
  if (p >= end || *p != '#')
    return false;
  p++;
  bool hex = p < end && *p == 'x';
  p += hex;
  uint32_t cp = 0;
  const char *digits = p;
  for (; p < end && *p != ';'; p++) {
    int d = *p >= '0' && *p <= '9'          ? *p - '0'
            : hex && *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
            : hex && *p >= 'A' && *p <= 'F' ? *p - 'A' + 10
                                            : -1;
    if (d < 0 || p - digits >= 8)
      return false;
    cp = cp * (hex ? 16 : 10) + (uint32_t)d;
  }
  if (p >= end || p == digits || cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) ||
      (cp < 0x20 && cp != '\t' && cp != '\n' && cp != '\r'))
    return false;
  *n = put_utf8(dst, cp);
  *pp = p + 1;
  return true;
}

/* Decodes the raw characters [b, e) into a new arena string. In attribute values white
 * space characters become spaces and '<' is refused; in text, line ends become "\n" (both as
 * XML 1.0 says). */
static tessera_status decode(struct parser *ps, const char *b, const char *e, bool attribute,
                             const char **out, size_t *out_len) {
  char *dst = arena_alloc(ps->doc, (size_t)(e - b) + 1);
  if (!dst)
    return nomem();
  size_t n = 0;
  for (const char *p = b; p < e;) {
    char c = *p;
    if (c == '&') {
      size_t k;
      const char *at = p;
      if (!decode_reference(&p, e, dst + n, &k))
        return fail(ps, at, "a bad entity or character reference");
      n += k;
      continue;
    }
    if (c == '<')
      return fail(ps, p, "'<' inside an attribute value");
    if (c == '\0')
      return fail(ps, p, "a NUL character");
    if (attribute && is_ws(c)) {
      dst[n++] = ' ';
      p += c == '\r' && p + 1 < e && p[1] == '\n' ? 2 : 1;
      continue;
    }
    if (c == '\r') {
      dst[n++] = '\n';
      p += p + 1 < e && p[1] == '\n' ? 2 : 1;
      continue;
    }
    if (!attribute && c == ']' && e - p >= 3 && p[1] == ']' && p[2] == '>')
      return fail(ps, p, "']]>' in text");
    dst[n++] = c;
    p++;
  }
  dst[n] = 0;
  *out = dst;
  if (out_len)
    *out_len = n;
  return TESSERA_OK;
}

static tessera_status add_segment(struct parser *ps, const char *s, size_t len) {
  struct open_element *top = &ps->stack[ps->depth - 1];
  if (len == 0)
    return TESSERA_OK;
  struct segment *seg = arena_alloc(ps->doc, sizeof *seg);
  if (!seg)
    return nomem();
  *seg = (struct segment){s, len, NULL};
  if (top->last)
    top->last->next = seg;
  else
    top->first = seg;
  top->last = seg;
  top->nseg++;
  top->text_len += len;
  return TESSERA_OK;
}

/* Character data up to the next '<': inside an element it is text; outside the root only
 * white space may stand. */
static tessera_status parse_text(struct parser *ps) {
  const char *b = ps->p, *e = memchr(b, '<', (size_t)(ps->end - b));
  if (!e)
    e = ps->end;
  ps->p = e;
  if (ps->depth == 0) {
    for (const char *q = b; q < e; q++)
      if (!is_ws(*q))
        return fail(ps, q, "text outside the root element");
    return TESSERA_OK;
  }
  const char *s;
  size_t len;
  tessera_status st = decode(ps, b, e, false, &s, &len);
  return st != TESSERA_OK ? st : add_segment(ps, s, len);
}

static tessera_status parse_attributes(struct parser *ps, size_t *count, bool *empty) {
  *count = 0;
  for (;;) {
    const char *before = ps->p;
    skip_ws(ps);
    if (ps->p >= ps->end)
      return fail(ps, ps->p, "the document ends inside a tag");
    if (*ps->p == '>') {
      ps->p++;
      *empty = false;
      return TESSERA_OK;
    }
    if (starts(ps, "/>")) {
      ps->p += 2;
      *empty = true;
      return TESSERA_OK;
    }
    if (ps->p == before)
      return fail(ps, ps->p, "white space was expected before an attribute");
    if (*count == TSR_XML_MAX_ATTRIBUTES)
      return fail(ps, ps->p, "an element has too many attributes");
    struct tsr_xml_attr *a = &ps->attrs[*count];
    tessera_status st = parse_name(ps, &a->name);
    if (st != TESSERA_OK)
      return st;
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '=')
      return fail(ps, ps->p, "'=' was expected after an attribute name");
    ps->p++;
    skip_ws(ps);
    if (ps->p >= ps->end || (*ps->p != '"' && *ps->p != '\''))
      return fail(ps, ps->p, "a quoted attribute value was expected");
    const char *b = ps->p + 1, *e = memchr(b, *ps->p, (size_t)(ps->end - b));
    if (!e)
      return fail(ps, ps->p, "an attribute value is not closed");
    if ((st = decode(ps, b, e, true, &a->value, NULL)) != TESSERA_OK)
      return st;
    ps->p = e + 1;
    for (size_t i = 0; i < *count; i++)
      if (strcmp(ps->attrs[i].name, a->name) == 0)
        return fail(ps, b, "an attribute is given twice");
    (*count)++;
  }
}

static tessera_status close_element(struct parser *ps) {
  struct open_element *top = &ps->stack[--ps->depth];
  struct tsr_xml_node *n = top->node;
  n->text_len = top->text_len;
  if (top->nseg == 0) {
    n->text = "";
  } else {
    /* Joined into the arena even when there is one segment: a CDATA section's points into
     * the source, where no NUL ends it. */
    char *t = arena_alloc(ps->doc, top->text_len + 1);
    if (!t)
      return nomem();
    size_t at = 0;
    for (const struct segment *s = top->first; s; s = s->next) {
      memcpy(t + at, s->s, s->len);
      at += s->len;
    }
    t[at] = 0;
    n->text = t;
  }
  return TESSERA_OK;
}

static tessera_status parse_start_tag(struct parser *ps) {
  if (ps->depth == 0 && ps->doc->root)
    return fail(ps, ps->p, "a second root element");
  if (ps->depth == TSR_XML_MAX_DEPTH)
    return fail(ps, ps->p, "elements are nested too deeply");
  if (++ps->elements > TSR_XML_MAX_ELEMENTS)
    return fail(ps, ps->p, "too many elements");
  ps->p++;
  struct tsr_xml_node *n = arena_alloc(ps->doc, sizeof *n);
  if (!n)
    return nomem();
  memset(n, 0, sizeof *n);
  size_t count = 0;
  bool empty = false;
  tessera_status st = parse_name(ps, &n->name);
  if (st == TESSERA_OK)
    st = parse_attributes(ps, &count, &empty);
  if (st != TESSERA_OK)
    return st;
  if (count) {
    struct tsr_xml_attr *attrs = arena_alloc(ps->doc, count * sizeof *attrs);
    if (!attrs)
      return nomem();
    memcpy(attrs, ps->attrs, count * sizeof *attrs);
    n->attrs = attrs;
    n->nattrs = count;
  }
  if (ps->depth == 0) {
    ps->doc->root = n;
  } else {
    struct open_element *parent = &ps->stack[ps->depth - 1];
    n->parent = parent->node;
    if (parent->last_child)
      parent->last_child->next_sibling = n;
    else
      parent->node->first_child = n;
    parent->last_child = n;
  }
  ps->stack[ps->depth++] = (struct open_element){.node = n};
  return empty ? close_element(ps) : TESSERA_OK;
}

static tessera_status parse_end_tag(struct parser *ps) {
  const char *at = ps->p;
  ps->p += 2;
  if (ps->depth == 0)
    return fail(ps, at, "an end tag without a start tag");
  const char *b = ps->p;
  while (ps->p < ps->end && name_char((unsigned char)*ps->p))
    ps->p++;
  const char *open = ps->stack[ps->depth - 1].node->name;
  if ((size_t)(ps->p - b) != strlen(open) || memcmp(b, open, (size_t)(ps->p - b)) != 0)
    return fail(ps, at, "an end tag does not match its start tag");
  skip_ws(ps);
  if (ps->p >= ps->end || *ps->p != '>')
    return fail(ps, ps->p, "'>' was expected to end an end tag");
  ps->p++;
  return close_element(ps);
}

/* Skips from the current "<?" or "<!--" to just after `close`. */
static tessera_status skip_until(struct parser *ps, size_t open_len, const char *close,
                                 const char *what) {
  const char *e = find(ps->p + open_len, ps->end, close);
  if (!e)
    return fail(ps, ps->p, what);
  ps->p = e + strlen(close);
  return TESSERA_OK;
}

static tessera_status parse_markup(struct parser *ps) {
  if (starts(ps, "</"))
    return parse_end_tag(ps);
  if (starts(ps, "<?"))
    return skip_until(ps, 2, "?>", "a processing instruction is not closed");
  if (starts(ps, "<!--"))
    return skip_until(ps, 4, "-->", "a comment is not closed");
  if (starts(ps, "<![CDATA[")) {
    if (ps->depth == 0)
      return fail(ps, ps->p, "CDATA outside the root element");
    const char *b = ps->p + 9, *e = find(b, ps->end, "]]>");
    if (!e)
      return fail(ps, ps->p, "a CDATA section is not closed");
    ps->p = e + 3;
    return add_segment(ps, b, (size_t)(e - b));
  }
  if (starts(ps, "<!DOCTYPE"))
    return fail(ps, ps->p, "a document type declaration (DTDs are not accepted)");
  if (starts(ps, "<!"))
    return fail(ps, ps->p, "unknown markup '<!'");
  return parse_start_tag(ps);
}

tessera_status tsr_xml_parse(const char *src, size_t len, struct tsr_xml_doc **out) {
  *out = NULL;
  if (len > TSR_XML_MAX_INPUT)
    return tsr_error(TESSERA_E_LIMIT, "the XML is %zu bytes, more than the limit of %zu", len,
                     TSR_XML_MAX_INPUT);
  struct parser *ps = tsr_calloc(1, sizeof *ps);
  struct tsr_xml_doc *doc = tsr_calloc(1, sizeof *doc);
  if (!ps || !doc) {
    tsr_free(ps);
    tsr_free(doc);
    return nomem();
  }
  ps->src = ps->p = src;
  ps->end = src + len;
  ps->doc = doc;
  if (starts(ps, "\xEF\xBB\xBF"))
    ps->p += 3;
  tessera_status st = TESSERA_OK;
  while (st == TESSERA_OK && ps->p < ps->end)
    st = *ps->p == '<' ? parse_markup(ps) : parse_text(ps);
  if (st == TESSERA_OK && ps->depth > 0)
    st = fail(ps, ps->end, "the document ends inside an element");
  if (st == TESSERA_OK && !doc->root)
    st = fail(ps, ps->end, "there is no root element");
  tsr_free(ps);
  if (st != TESSERA_OK) {
    tsr_xml_free(doc);
    return st;
  }
  *out = doc;
  return TESSERA_OK;
}

const struct tsr_xml_node *tsr_xml_root(const struct tsr_xml_doc *doc) {
  return doc ? doc->root : NULL;
}

/* ---- queries ---- */

static const char *local_name(const char *name) {
  const char *colon = strchr(name, ':');
  return colon ? colon + 1 : name;
}

bool tsr_xml_is(const struct tsr_xml_node *n, const char *name) {
  return n && strcmp(local_name(n->name), name) == 0;
}

const char *tsr_xml_attr(const struct tsr_xml_node *n, const char *name) {
  for (size_t i = 0; n && i < n->nattrs; i++)
    if (strcmp(local_name(n->attrs[i].name), name) == 0)
      return n->attrs[i].value;
  return NULL;
}

static const struct tsr_xml_node *from(const struct tsr_xml_node *c, const char *name) {
  while (c && name && !tsr_xml_is(c, name))
    c = c->next_sibling;
  return c;
}

const struct tsr_xml_node *tsr_xml_child(const struct tsr_xml_node *n, const char *name) {
  return n ? from(n->first_child, name) : NULL;
}

const struct tsr_xml_node *tsr_xml_next(const struct tsr_xml_node *after, const char *name) {
  return after ? from(after->next_sibling, name) : NULL;
}

/* ---- base64 ---- */

static int base64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  return c == '+' ? 62 : c == '/' ? 63 : -1;
}

bool tsr_base64_decode(const char *src, size_t len, unsigned char **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  unsigned char *dst = tsr_malloc(len / 4 * 3 + 3);
  if (!dst)
    return false;
  size_t n = 0, pad = 0;
  uint32_t acc = 0, nbits = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)src[i];
    if (is_ws((char)c))
      continue;
    if (c == '=' && pad < 2) {
      pad++;
      continue;
    }
    int v = base64_value(c);
    if (v < 0 || pad > 0) {
      tsr_free(dst);
      return false; /* a stray character, or data after the padding */
    }
    acc = (acc << 6) | (uint32_t)v;
    nbits += 6;
    if (nbits >= 8) {
      nbits -= 8;
      dst[n++] = (unsigned char)(acc >> nbits);
      acc &= (1u << nbits) - 1;
    }
  }
  /* Leftover bits: 6 (one character of a group) cannot be; 2 or 4 must be zero. */
  if (nbits >= 6 || acc != 0 || n == 0) {
    tsr_free(dst);
    return false;
  }
  *out = dst;
  *out_len = n;
  return true;
}
