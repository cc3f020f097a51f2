"""The ctypes mirror of the public header (tessera_ctypes, read from include/tessera.h when it
is imported) against the C compiler's reading of the same header: every struct of the header
has a mirror, with the same fields, each at the compiler's offset and of its size, in a struct
of the compiler's size; every enum constant and #define has the compiler's value."""

import ctypes
import os
import subprocess

import pytest

import tessera_ctypes as T
import wsi_fixtures as F

BUILD = os.environ.get("TESSERA_BUILD_DIR", os.path.join(F.REPO, "build"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """What a C program built against tessera.h says: {(struct, field or None): (offset,
    size)} (None: the struct itself, offset 0) and {constant: value}."""
    out = tmp_path_factory.mktemp("mirror")
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "tessera.h"',
             "int main(void) {"]
    for struct, fields in T.STRUCTS.items():
        lines.append('  printf("%s - 0 %%zu\\n", sizeof(%s));' % (struct, struct))
        for name, *_ in fields:
            lines.append('  printf("%s %s %%zu %%zu\\n", offsetof(%s, %s), sizeof(((%s *)0)->%s));'
                         % (struct, name, struct, name, struct, name))
    for name in list(T.CONSTANTS) + list(T.DEFINES):
        lines.append('  printf("%s %%lld\\n", (long long)%s);' % (name, name))
    lines += ["  return 0;", "}"]
    src, exe = str(out / "layout.c"), str(out / "layout")
    with open(src, "w") as f:
        f.write("\n".join(lines) + "\n")
    subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", "-I", os.path.join(F.REPO, "include"),
                    "-I", os.path.join(BUILD, "include"), src, "-o", exe], check=True)
    layout, constants = {}, {}
    report = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    for line in report.splitlines():
        words = line.split()
        if len(words) == 4:
            layout[(words[0], None if words[1] == "-" else words[1])] = (int(words[2]),
                                                                         int(words[3]))
        else:
            constants[words[0]] = int(words[1])
    return layout, constants


def test_every_struct_of_the_header_is_mirrored():
    assert sorted(T.MIRRORS) == sorted(T.STRUCTS)


@pytest.mark.parametrize("struct", sorted(T.MIRRORS))
def test_mirror_has_the_compilers_layout(compiled, struct):
    layout, _ = compiled
    mirror = T.MIRRORS[struct]
    names = [name for name, _ in mirror._fields_]
    assert names == [name for name, *_ in T.STRUCTS[struct]]
    got = {name: (getattr(mirror, name).offset, getattr(mirror, name).size) for name in names}
    want = {name: layout[(struct, name)] for name in names}
    assert got == want
    assert ctypes.sizeof(mirror) == layout[(struct, None)][1]


def test_constants_have_the_compilers_values(compiled):
    _, constants = compiled
    assert {**T.CONSTANTS, **T.DEFINES} == constants
    assert (T.OK, T.E_LIMIT, T.CACHE_SHARED_MEMORY, T.DEVICE_CUDA) == (
        constants["TESSERA_OK"], constants["TESSERA_E_LIMIT"],
        constants["TESSERA_CACHE_SHARED_MEMORY"], constants["TESSERA_DEVICE_CUDA"])
