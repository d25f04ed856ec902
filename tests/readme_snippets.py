#!/usr/bin/env python3
"""Compiles every C example in README.md, so the examples cannot drift from the API.

    python3 tests/readme_snippets.py README.md INCLUDE_DIR LIB_DIR

Each ```c block is one of three kinds:
  - a program (it defines main): compiled and linked against LIB_DIR/libcnerium.a and
    its dependencies (pkg-config), then run with --help (it must parse its flags and
    exit at once, or fail with a message);
  - function definitions (a line at column 0 opens one): compiled as a translation unit
    after the usual includes;
  - statements: compiled as the body of a function `void snippet(cn_app_t *app)`, after
    the usual includes and declarations of the handlers the README's text names.
Warnings are allowed (fragments leave variables unused); errors that mean the example is
wrong (undeclared functions, wrong argument types) are errors. Exit 0 when every block
compiles (and every program links and runs).
"""
import os
import re
import subprocess
import sys
import tempfile

INCLUDES = ("#include <errno.h>\n#include <stdint.h>\n#include <stdio.h>\n#include <string.h>\n"
            "#include <cnerium/cnerium.h>\n")
# Handlers the README's statement examples register: defined in the text around them.
DECLARED = "cn_response_t create_order(cn_request_t *req, void *ctx);\n"
STRICT = ["-std=c11", "-Wall", "-Werror=implicit-function-declaration",
          "-Werror=incompatible-pointer-types", "-Werror=int-conversion",
          "-Werror=return-type", "-Werror=implicit-int", "-Werror=missing-prototypes"]
DEPS = "libcjson libmicrohttpd lmdb libcrypto liburing libwebsockets libpq"


def blocks(text):
    """(line number, code) of every ```c block."""
    out = []
    for m in re.finditer(r"^```c\n(.*?)^```", text, re.S | re.M):
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


def kind(code):
    if re.search(r"^(int|void)\s*\n?main\s*\(|^int main\(", code, re.M):
        return "program"
    if re.search(r"^[A-Za-z_][A-Za-z0-9_ \*]*\(.*\)?\s*$\n^\{", code, re.M) or \
            re.search(r"^static ", code, re.M):
        return "functions"
    return "statements"


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def main(argv):
    readme, include, libdir = argv[1:4]
    with open(readme) as f:
        found = blocks(f.read())
    if not found:
        print("readme_snippets: no ```c block in %s" % readme)
        return 1
    deps = subprocess.run(["pkg-config", "--cflags", "--libs"] + DEPS.split(),
                          capture_output=True, text=True, check=True).stdout.split()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for line, code in found:
            k = kind(code)
            src = os.path.join(tmp, "readme_%d.c" % line)
            with open(src, "w") as f:
                if k == "program":
                    f.write(code)
                elif k == "functions":
                    # A function the README shows alone may be static and unused here.
                    f.write(INCLUDES + "#pragma GCC diagnostic ignored \"-Wunused-function\"\n"
                            + code)
                else:
                    f.write(INCLUDES + DECLARED + "void snippet(cn_app_t *app);\n"
                            "void snippet(cn_app_t *app)\n{\n" + code + "}\n")
            if k == "program":
                exe = src[:-2]
                rc, out = run(["cc"] + STRICT + ["-I" + include, "-o", exe, src,
                                                 os.path.join(libdir, "libcnerium.a")]
                              + deps + ["-lpthread", "-lm"])
                if rc == 0:
                    rc, out2 = run([exe, "--help"])
                    out += out2
                    rc = 0 if rc in (0, 1) and "--port" in out2 else rc or 1
            else:
                rc, out = run(["cc"] + STRICT + ["-I" + include, "-c", "-o", src + ".o", src])
            print("README.md:%d (%s): %s" % (line, k, "ok" if rc == 0 else "FAILED"))
            if rc:
                failed += 1
                sys.stdout.write(out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
