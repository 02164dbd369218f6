#!/bin/sh
# Usage: hello.sh USER-INPUT-FILE (the engine passes it as the last argument).
set -eu
input_file=$1
name=$(tr -cd 'A-Za-z0-9 _.-' < "$input_file" | head -c 100)
[ -n "$name" ] || name=world
printf 'hello, %s\n' "$name" > "$OUTPUT_DIR/hello.txt"
echo "hello.sh: greeted $name; ITEM_DIR=${ITEM_DIR:-none}" >&2
cat <<JSON
{
  "commands": [],
  "files": [],
  "newItems": [
    {"metadata": {"tags": ["hello"], "language": "eng"}, "files": ["hello.txt"]}
  ]
}
JSON
