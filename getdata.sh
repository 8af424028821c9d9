#!/usr/bin/env bash
# Download and prepare the language-modelling corpora into <repo>/data/.
#
#   bash getdata.sh                 # everything (lm1b alone is ~1.7 GB)
#   bash getdata.sh wt103 enwik8    # a subset of: wt2 wt103 enwik8 text8 ptb lm1b
#
# Layout (what rmt.lm.corpus.get_lm_corpus reads):
#   data/wikitext-2, data/wikitext-103, data/enwik8, data/text8,
#   data/penn (PTB words), data/pennchar (PTB characters)  -> {train,valid,test}.txt
#   data/one-billion-words -> valid.txt = test.txt = heldout shard 0, 1b_word_vocab.txt,
#                             training shards under 1-billion-word-...-r13output/
# A corpus whose prepared files exist is skipped, so the script can be re-run after
# an interruption; downloads land in *.part files and are renamed only when complete.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="$ROOT/data"
PYTHON="${PYTHON:-python3}"
ALL=(wt2 wt103 enwik8 text8 ptb lm1b)

# fetch DEST URL...: download DEST from the first URL that works (mirrors in order).
fetch() {
    local dest=$1 url
    shift
    [[ -s $dest ]] && return 0
    for url in "$@"; do
        echo "  downloading $url"
        # `|| ...` on every command: errexit is off inside `if`/`||` contexts.
        if command -v wget >/dev/null 2>&1; then
            wget -q --tries=3 -O "$dest.part" "$url" || { rm -f "$dest.part"; continue; }
        else
            curl -fsSL --retry 3 -o "$dest.part" "$url" || { rm -f "$dest.part"; continue; }
        fi
        mv "$dest.part" "$dest" && return 0
    done
    echo "error: could not download $(basename "$dest") from: $*" >&2
    return 1
}

has_splits() {  # has_splits DIR: train/valid/test.txt all present and non-empty
    [[ -s $1/train.txt && -s $1/valid.txt && -s $1/test.txt ]]
}

get_wikitext() {  # get_wikitext wikitext-2|wikitext-103
    local name=$1 dir="$DATA/$1" split
    if has_splits "$dir"; then echo "$name: ready"; return 0; fi
    echo "$name:"
    mkdir -p "$dir"
    fetch "$dir/$name-v1.zip" \
        "https://s3.amazonaws.com/research.metamind.io/wikitext/$name-v1.zip" \
        "https://wikitext.smerity.com/$name-v1.zip"
    unzip -q -o "$dir/$name-v1.zip" -d "$dir"  # -> $dir/$name/wiki.{train,valid,test}.tokens
    for split in train valid test; do
        mv "$dir/$name/wiki.$split.tokens" "$dir/$split.txt"
    done
    rm -rf "${dir:?}/$name"
}

get_mahoney() {  # get_mahoney enwik8|text8: 90M/5M/5M split done by rmt.lm.prepare
    local name=$1 dir="$DATA/$1"
    if has_splits "$dir"; then echo "$name: ready"; return 0; fi
    echo "$name:"
    mkdir -p "$dir"
    fetch "$dir/$name.zip" "http://mattmahoney.net/dc/$name.zip"
    "$PYTHON" -m rmt.lm.prepare "$name" "$dir/$name.zip" "$dir"
}

get_ptb() {  # word-level PTB -> data/penn, character-level -> data/pennchar
    local words="$DATA/penn" chars="$DATA/pennchar" tmp="$DATA/ptb-download" split
    if has_splits "$words" && has_splits "$chars"; then echo "ptb: ready"; return 0; fi
    echo "ptb:"
    mkdir -p "$words" "$chars" "$tmp"
    fetch "$tmp/simple-examples.tgz" "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
    tar -xzf "$tmp/simple-examples.tgz" -C "$tmp"
    for split in train valid test; do
        cp "$tmp/simple-examples/data/ptb.$split.txt" "$words/$split.txt"
        cp "$tmp/simple-examples/data/ptb.char.$split.txt" "$chars/$split.txt"
    done
    rm -rf "$tmp"
}

get_lm1b() {
    local dir="$DATA/one-billion-words" name="1-billion-word-language-modeling-benchmark-r13output"
    local heldout="$name/heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050"
    local vocab_url="https://github.com/rafaljozefowicz/lm/raw/master/1b_word_vocab.txt"
    if [[ -f $dir/.extracted && -s $dir/1b_word_vocab.txt && -s $dir/valid.txt \
          && -s $dir/test.txt ]]; then
        echo "lm1b: ready"; return 0
    fi
    echo "lm1b:"
    mkdir -p "$dir"
    fetch "$dir/$name.tar.gz" "http://www.statmt.org/lm-benchmark/$name.tar.gz"
    if [[ ! -f $dir/.extracted ]]; then  # marker: a half-extracted tree must not count as done
        tar -xzf "$dir/$name.tar.gz" -C "$dir"
        touch "$dir/.extracted"
    fi
    fetch "$dir/1b_word_vocab.txt" "$vocab_url"
    # The benchmark has no separate dev set: heldout shard 0 serves as both valid and test.
    cp "$dir/$heldout" "$dir/valid.txt.part" && mv "$dir/valid.txt.part" "$dir/valid.txt"
    cp "$dir/$heldout" "$dir/test.txt.part" && mv "$dir/test.txt.part" "$dir/test.txt"
}

main() {
    local wanted=("$@") name
    [[ ${#wanted[@]} -eq 0 ]] && wanted=("${ALL[@]}")
    for name in "${wanted[@]}"; do
        case $name in
            wt2|wt103|enwik8|text8|ptb|lm1b) ;;
            *) echo "error: unknown corpus '$name'; choose from: ${ALL[*]}" >&2; exit 2 ;;
        esac
    done
    mkdir -p "$DATA"
    for name in "${wanted[@]}"; do
        case $name in
            wt2) get_wikitext wikitext-2 ;;
            wt103) get_wikitext wikitext-103 ;;
            enwik8|text8) get_mahoney "$name" ;;
            ptb) get_ptb ;;
            lm1b) get_lm1b ;;
        esac
    done
    echo "done: corpora are in $DATA"
}

main "$@"
