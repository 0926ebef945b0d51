"""Generate self-validating PHP files for the reproduction harness.

Each generated file declares one class with a random name. Its check method compares the
MD5 of the ``$data`` literal with the ``$hash`` literal, the JSON form of a table with string
keys with a literal digest, and the run-time names (``static::class``, ``__FUNCTION__``) with
the names it expects. The expected names are stored hex-encoded, so they never share an
interned string with the names they check: corruption of either side shows as a mismatch.

Generation is a pure function of (seed, round, file name): ``random.Random`` seeded with a
string (hashed with SHA-512, so independent of PYTHONHASHSEED), no clock, sorted iteration.
The same seed regenerates byte-identical code, so a failing run can be replayed.

Files that PHP executes are written with ``O_EXCL`` under a temporary name in the target's
own directory and given their mtime. Then they are renamed onto the target, so a rewrite is
atomic like rsync's and a worker never reads half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import string
from pathlib import Path

from opcache_guard import phpfiles
from opcache_guard.errors import StressError

FAULTS = ("wrong-hash", "wrong-class")

# No quote and no backslash, so the text is its own PHP single-quoted literal.
_DATA_ALPHABET = "".join(c for c in string.printable[:94] if c not in "'\\")
# Safe in PHP literals and left alone by json_encode, so PHP and Python agree on the digest.
_KEY_ALPHABET = string.ascii_letters + string.digits + "_-.:"
_LOWER = string.ascii_lowercase
_UPPER = string.ascii_uppercase


@dataclasses.dataclass(frozen=True)
class GeneratedFile:
    """One generated PHP file and the names its check must report."""

    name: str
    round: int
    class_name: str
    method_name: str
    source: bytes


def _word(rng: random.Random, low: int, high: int, first: str = _LOWER) -> str:
    length = rng.randint(low, high)
    return rng.choice(first) + "".join(rng.choice(_LOWER + _UPPER) for _ in range(length - 1))


def _text(rng: random.Random, alphabet: str, low: int, high: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def _hex(text: str) -> str:
    return text.encode().hex()


def _table_digest(table: dict[str, str]) -> str:
    encoded = json.dumps(table, separators=(",", ":"), ensure_ascii=True)
    return hashlib.md5(encoded.encode()).hexdigest()


def generate_file(seed: int, round_no: int, name: str, fault: str = "",
                  data_size: tuple[int, int] = (200, 6000)) -> GeneratedFile:
    """Generate one self-validating PHP file.

    Arguments:
        seed: the run's seed.
        round_no: the deploy round that writes this version of the file.
        name: the file name inside the live tree, part of the class name for uniqueness.
        fault: "" for a correct file, or one of FAULTS for a deliberately broken one.
        data_size: lowest and highest length of the random ``$data`` literal, in bytes.

    Returns:
        The file, whose source depends only on the arguments.

    Raises:
        StressError: fault is not one of FAULTS.
    """
    if fault and fault not in FAULTS:
        raise StressError(f"unknown fault {fault!r}; use one of {', '.join(FAULTS)}")
    rng = random.Random(f"opcache-guard/{seed}/{round_no}/{name}")
    stem = name.removesuffix(".php").replace("-", "_")
    class_name = f"{_word(rng, 6, 24, _UPPER)}_{stem}_r{round_no}"
    method_name = _word(rng, 5, 20)
    data = _text(rng, _DATA_ALPHABET, *data_size)
    table = {_text(rng, _KEY_ALPHABET, 3, 40): _text(rng, _KEY_ALPHABET, 0, 60)
             for _ in range(rng.randint(3, 30))}
    constants = {"K_" + _word(rng, 4, 16, _UPPER).upper(): _text(rng, _KEY_ALPHABET, 1, 80)
                 for _ in range(rng.randint(1, 5))}
    helpers = [_word(rng, 5, 18) + f"_{index}" for index in range(rng.randint(1, 4))]

    data_hash = hashlib.md5(data.encode()).hexdigest()
    expected_class = class_name
    if fault == "wrong-hash":
        data_hash = hashlib.md5((data + "!").encode()).hexdigest()
    elif fault == "wrong-class":
        # One letter changed, the shape of the corrupted identifiers seen in production.
        swapped = "Z" if class_name[0] != "Z" else "Y"
        expected_class = swapped + class_name[1:]

    source = _render(seed, round_no, name, class_name, method_name, expected_class, data,
                     data_hash, table, constants, helpers)
    return GeneratedFile(name, round_no, class_name, method_name, source.encode())


def _render(seed: int, round_no: int, name: str, class_name: str, method_name: str,
            expected_class: str, data: str, data_hash: str, table: dict[str, str],
            constants: dict[str, str], helpers: list[str]) -> str:
    first_constant = min(constants)
    lines = [
        "<?php",
        f"// opcache-guard stress file {name}, seed {seed}, round {round_no}. Generated.",
        "",
        f"final class {class_name}",
        "{",
    ]
    lines += [f"    public const {key} = '{value}';" for key, value in sorted(constants.items())]
    lines += [
        "",
        f"    public string $data = '{data}';",
        f"    public string $hash = '{data_hash}';",
        "    public array $table = [",
    ]
    lines += [f"        '{key}' => '{value}'," for key, value in table.items()]
    lines += [
        "    ];",
        "",
        f"    public function {method_name}(): array",
        "    {",
        "        return [",
        f"            'version' => {round_no},",
        f"            'expected_class' => hex2bin('{_hex(expected_class)}'),",
        f"            'expected_method' => hex2bin('{_hex(method_name)}'),",
        "            'class' => static::class,",
        "            'method' => __FUNCTION__,",
        "            'hash_ok' => md5($this->data) === $this->hash,",
        f"            'table_ok' => md5(json_encode($this->table)) === '{_table_digest(table)}',",
        "        ];",
        "    }",
    ]
    for helper in helpers:
        lines += [
            "",
            f"    public function {helper}(string $key): string",
            "    {",
            f"        return $this->table[$key] ?? self::{first_constant} . strlen($this->data);",
            "    }",
        ]
    lines += [
        "}",
        "",
        (f"return ['class' => hex2bin('{_hex(class_name)}'), "
        f"'method' => hex2bin('{_hex(method_name)}')];"),
        "",
    ]
    return "\n".join(lines)


def manifest_source(round_no: int, names: list[str]) -> bytes:
    """Return the PHP manifest of a round: the sorted list of its file names."""
    listed = ", ".join(f"'{name}'" for name in sorted(names))
    return f"<?php\n// opcache-guard stress manifest, round {round_no}.\nreturn [{listed}];\n".encode()


ENTRY_SOURCE = r"""<?php
// opcache-guard stress entry: include one round's files and report every check as JSON.
// Passing checks are only counted unless the query has "all"; failed ones are listed.
header('Content-Type: application/json');
header('Cache-Control: no-store');

$round = (int)($_GET['round'] ?? -1);
$all = isset($_GET['all']);
$out = ['round' => $round, 'pid' => getmypid(), 'checks' => 0, 'passed' => 0, 'gone' => 0,
        'expired' => false, 'results' => []];
$names = @include sprintf('%s/manifests/r%06d.php', __DIR__, $round);
if (!is_array($names)) {
    $out['expired'] = true;
    echo json_encode($out);
    return;
}
foreach ($names as $name) {
    $path = __DIR__ . '/live/' . $name;
    $check = ['round' => $round, 'file' => $name, 'ok' => false];
    try {
        $info = @include $path;
        if (!is_array($info)) {
            if (!file_exists($path)) {
                $out['gone']++;
                continue;
            }
            throw new UnexpectedValueException("$name returned no class description");
        }
        $object = new $info['class']();
        $found = $object->{$info['method']}();
        $check += $found;
        $check['ok'] = $found['hash_ok'] && $found['table_ok']
            && $found['class'] === $found['expected_class']
            && $found['method'] === $found['expected_method'];
    } catch (Throwable $e) {
        $check['error'] = get_class($e) . ': ' . $e->getMessage();
    }
    $out['checks']++;
    if ($check['ok']) {
        $out['passed']++;
    }
    if (!$check['ok'] || $all) {
        $out['results'][] = $check;
    }
}
echo json_encode($out, JSON_PARTIAL_OUTPUT_ON_ERROR | JSON_INVALID_UTF8_SUBSTITUTE);
"""

RESET_SOURCE = """<?php
// opcache-guard stress: reset OPcache on request, to race manual restarts with load.
header('Content-Type: application/json');
echo json_encode(['reset' => opcache_reset(), 'pid' => getmypid()]);
"""


def prepare_private_dir(directory: Path) -> None:
    """Create a directory that only we can write and php-fpm workers can read.

    Raises:
        StressError: the directory or a parent is a symbolic link, belongs to someone else,
            or others can write to it, so PHP could run files that someone else placed there.
    """
    phpfiles.prepare_directory(directory, "stress directory", StressError)


def write_atomic(path: Path, content: bytes, mtime: float) -> None:
    """Replace path with content and the given mtime in one rename.

    Raises:
        StressError: the file could not be written.
    """
    try:
        phpfiles.write_php(path, content, mtime)
    except OSError as exc:
        raise StressError(f"cannot write {path}: {exc.strerror or exc}; check the disk and "
                          "the directory's permissions") from exc
