#!/usr/bin/env bash
# moe beside llama.cpp on the same weights, on this machine, interleaved rounds.
#   Scripts/peer-llamacpp.sh setup          builds llama.cpp (llama-bench, llama-server) from the llama-cpp-python
#                                           source package on PyPI into .build-peer/, and writes `medium` as f32
#                                           safetensors and GGUF (Scripts/hf_to_gguf.py) under .build/models/
#   Scripts/peer-llamacpp.sh context [LENS] batch 1: prefill of LENS tokens (default 2048 8192) and decode of 32
#                                           tokens after them; moe with a bf16 KV cache, llama.cpp with flash
#                                           attention and its f16 KV cache; both with 2 threads
#   Scripts/peer-llamacpp.sh serve          moe serve --max-batch 8 and llama-server --parallel 8, the same
#                                           `moe bench serve --max-concurrency 8 --input-len 128 --output-len 64`
#   Scripts/peer-llamacpp.sh decode [TYPES] 128-token prompts, 64 decode steps, batch 1 and 8, for TYPES (default
#                                           f32 q8; also bf16): moe bench (q8: --weights-dtype q8 on the f32
#                                           checkpoint; bf16: the preset written in bf16) and llama-batched-bench on
#                                           the f32 GGUF or its Q8_0 / BF16 (llama-quantize)
# ROUNDS (default 3) interleaved rounds; prints one line per run and the medians. Nothing of llama.cpp is kept
# in the repository: it is downloaded and built here.
set -euo pipefail
cd "$(dirname "$0")/.."
peer=.build-peer
moe=.build/release/moe
model=.build/models/medium-f32
gguf=.build/models/medium-f32.gguf
gguf_q8=.build/models/medium-q8_0.gguf
gguf_bf16=.build/models/medium-bf16.gguf
model_bf16=.build/models/medium-bf16
rounds=${ROUNDS:-3}
src() { ls -d "$peer"/llama_cpp_python-*/vendor/llama.cpp 2>/dev/null | head -1; }

setup() {
    mkdir -p "$peer"
    if [ -z "$(src)" ]; then
        pip download --no-deps --no-binary llama-cpp-python llama-cpp-python -d "$peer"
        tar -xzf "$peer"/llama_cpp_python-*.tar.gz -C "$peer"
    fi
    command -v cmake > /dev/null || apt-get install -y cmake
    local dir; dir=$(src)
    cmake -S "$dir" -B "$dir/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > /dev/null
    cmake --build "$dir/build" -j2 --target llama-bench llama-server llama-batched-bench llama-quantize
    swift build -c release --product moe
    [ -f "$model/config.json" ] || "$moe" init-model --preset medium --output "$model"
    python3 -c 'import numpy' 2> /dev/null || pip install numpy
    [ -f "$gguf" ] || PYTHONPATH="$dir/gguf-py" python3 Scripts/hf_to_gguf.py "$model" Sources/moe/Resources/mixtral-tokenizer "$gguf"
    [ -f "$gguf_q8" ] || "$dir/build/bin/llama-quantize" "$gguf" "$gguf_q8" Q8_0
    [ -f "$gguf_bf16" ] || "$dir/build/bin/llama-quantize" "$gguf" "$gguf_bf16" BF16
    [ -f "$model_bf16/config.json" ] || "$moe" init-model --preset medium --dtype bf16 --output "$model_bf16"
}

median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print("%.1f" % statistics.median(v) if v else "-")' "$@"; }

context() {
    local lens=("$@"); [ ${#lens[@]} -gt 0 ] || lens=(2048 8192)
    local bin; bin=$(src)/build/bin
    for n in "${lens[@]}"; do
        local mp=() md=() lp=() ld=()
        for r in $(seq 1 "$rounds"); do
            local j
            j=$("$moe" bench --model "$model" --batch 1 --prompt-len "$n" --gen-len 32 --kv-dtype bf16 --max-model-len $((n + 64)) \
                --repetitions 1 --format json | tail -1)
            mp+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["prefill_tokens_per_s"])' "$j")")
            md+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["decode_tokens_per_s"])' "$j")")
            j=$("$bin/llama-bench" -m "$gguf" -t 2 -fa 1 -p "$n" -n 0 -r 1 -o json)
            lp+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])[0]["avg_ts"])' "$j")")
            j=$("$bin/llama-bench" -m "$gguf" -t 2 -fa 1 -p 0 -n 32 -d "$n" -r 1 -o json)
            ld+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])[0]["avg_ts"])' "$j")")
            echo "context $n round $r: moe prefill ${mp[-1]} decode ${md[-1]} | llama.cpp prefill ${lp[-1]} decode ${ld[-1]}"
        done
        echo "context $n medians: moe prefill $(median "${mp[@]}") decode $(median "${md[@]}") | llama.cpp prefill $(median "${lp[@]}") decode $(median "${ld[@]}")"
    done
}

wait_ready() {  # url pid
    for _ in $(seq 1 300); do
        curl -sf "$1/health" > /dev/null && return 0
        kill -0 "$2" 2> /dev/null || return 1
        sleep 1
    done
    return 1
}

serve() {
    local bin; bin=$(src)/build/bin
    local mo=() lo=()
    for r in $(seq 1 "$rounds"); do
        for peer_name in moe llama; do
            if [ $peer_name = moe ]; then
                "$moe" serve --model "$model" --tokenizer Sources/moe/Resources/mixtral-tokenizer --port 8601 --max-batch 8 > .build/peer-serve-moe.log 2>&1 &
                url=http://127.0.0.1:8601
            else
                "$bin/llama-server" -m "$gguf" -t 2 --parallel 8 -c 4096 -fa on --port 8602 > .build/peer-serve-llama.log 2>&1 &
                url=http://127.0.0.1:8602
            fi
            pid=$!
            wait_ready "$url" $pid || { echo "$peer_name did not start" >&2; kill $pid 2> /dev/null; exit 1; }
            j=$("$moe" bench serve --base-url "$url" --num-prompts 16 --max-concurrency 8 --input-len 128 --output-len 64 --format json | tail -1)
            kill -USR1 $pid 2> /dev/null; kill -TERM $pid 2> /dev/null || true; wait $pid 2> /dev/null || true
            t=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["output_throughput"], d["completed"], d["itl_ms"]["p50"], d["ttft_ms"]["p50"])' "$j")
            echo "serve round $r $peer_name: output tok/s, completed, ITL p50 ms, TTFT p50 ms: $t"
            if [ $peer_name = moe ]; then mo+=("${t%% *}"); else lo+=("${t%% *}"); fi
        done
    done
    echo "serve medians: moe $(median "${mo[@]}") output tok/s | llama-server $(median "${lo[@]}")"
}

decode() {
    local types=("$@"); [ ${#types[@]} -gt 0 ] || types=(f32 q8)
    local bin; bin=$(src)/build/bin
    declare -A runs
    for r in $(seq 1 "$rounds"); do
        for t in "${types[@]}"; do
            local flags=(--model "$model") file=$gguf
            if [ "$t" = q8 ]; then flags+=(--weights-dtype q8); file=$gguf_q8; fi
            if [ "$t" = bf16 ]; then flags=(--model "$model_bf16"); file=$gguf_bf16; fi
            for b in 1 8; do
                local j
                j=$("$moe" bench "${flags[@]}" --batch $b --prompt-len 128 --gen-len 64 --repetitions 1 --format json | tail -1)
                runs[moe-$t-$b-decode]+=" $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["decode_tokens_per_s"])' "$j")"
                runs[moe-$t-$b-prefill]+=" $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["prefill_tokens_per_s"])' "$j")"
            done
            local lines
            lines=$("$bin/llama-batched-bench" -m "$file" -t 2 -c 4096 -fa on -npp 128 -ntg 64 -npl 1,8 --output-format jsonl 2> /dev/null | grep '"pl"')
            for b in 1 8; do
                local line; line=$(echo "$lines" | grep "\"pl\": $b,")
                runs[llama-$t-$b-decode]+=" $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["speed_tg"])' "$line")"
                runs[llama-$t-$b-prefill]+=" $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["speed_pp"])' "$line")"
            done
            echo "round $r $t: moe decode b1 ${runs[moe-$t-1-decode]##* } b8 ${runs[moe-$t-8-decode]##* } prefill b1 ${runs[moe-$t-1-prefill]##* } | llama.cpp decode b1 ${runs[llama-$t-1-decode]##* } b8 ${runs[llama-$t-8-decode]##* } prefill b1 ${runs[llama-$t-1-prefill]##* }"
        done
    done
    for t in "${types[@]}"; do
        for b in 1 8; do
            # shellcheck disable=SC2086
            echo "$t batch $b medians: decode moe $(median ${runs[moe-$t-$b-decode]}) llama.cpp $(median ${runs[llama-$t-$b-decode]}); prefill moe $(median ${runs[moe-$t-$b-prefill]}) llama.cpp $(median ${runs[llama-$t-$b-prefill]})"
        done
    done
}

case "${1:-}" in
    setup) setup ;;
    context) shift; context "$@" ;;
    serve) serve ;;
    decode) shift; decode "$@" ;;
    *) echo "usage: Scripts/peer-llamacpp.sh setup | context [LENS...] | serve | decode [TYPES...]" >&2; exit 2 ;;
esac
