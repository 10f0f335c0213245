#!/usr/bin/env python3
"""Jinja cases for the chat-template subset, rendered by Python's jinja2 the way transformers renders chat templates
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, raise_exception, tojson without key
sorting or HTML escaping). Writes Tests/Fixtures/templates/cases.jsonl: {name, template, context, output | error}.

    python3 Scripts/make_template_cases.py Tests/Fixtures/templates/cases.jsonl
"""
import json
import sys

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Raised(Exception):
    pass


def raise_exception(message):
    raise Raised(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "  Tell me\na joke.  "},
]
NO_SYSTEM = CHAT[1:]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_CHAT = NO_SYSTEM[:1] + [
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "18 C, sunny"},
]
THINK_CHAT = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nsimple\n</think>\n\n4"},
    {"role": "user", "content": "and 3+3?"},
]

FEATURES = {
    "arithmetic": ("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 1.5 + 1 }} {{ 10 / 5 }}", {}),
    "concat_tilde": ("{{ 'a' ~ 1 ~ none ~ true }}|{{ 'x' + 'y' }}|{{ [1] + [2, 3] }}", {}),
    "comparisons": ("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 'a' != 'a' }} {{ 2 >= 2 }}", {}),
    "logic": ("{{ true and 'x' }}|{{ false or 'y' }}|{{ not none }}|{{ 0 or '' or 'z' }}|{{ [] and 1 }}", {}),
    "in_operator": ("{{ 'ell' in 'hello' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'q' not in 'abc' }}", {}),
    "ternary": ("{{ 'yes' if x else 'no' }} {{ 'a' if false }}|{{ 'b' if y is defined else 'c' }}", {"x": 1}),
    "print_values": ("{{ none }} {{ true }} {{ [1, 'a', none, 2.5] }} {{ {'k': 'v', 'n': 1} }} {{ undefined_thing }}|{{ 3.0 }} {{ 'it\\'s' }} {{ [\"it's\"] }}", {}),
    "string_methods": ("{{ '  pad  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  l'.lstrip() }}|{{ 'r  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b  c'.split() }}|{{ 'a-b-c'.split('-', 1) }}|{{ 'Hello'.startswith('He') }}|{{ 'Hello'.endswith(('x', 'lo')) }}|{{ 'MiXed'.upper() }}{{ 'MiXed'.lower() }}|{{ 'hello world'.title() }}|{{ 'hELLO'.capitalize() }}|{{ 'aaa'.replace('a', 'b') }}|{{ ', '.join(['x', 'y']) }}|{{ 'hello'.find('l') }}|{{ 'banana'.count('an') }}", {}),
    "filters_text": ("{{ 'abc' | upper }}|{{ 'ABC' | lower }}|{{ '  t  ' | trim }}|{{ 'word' | capitalize }}|{{ 'a b' | title }}|{{ 'x' | length }}|{{ [1, 2] | count }}|{{ 'a<b>&' | e }}|{{ 'ab' | replace('a', 'z') }}|{{ 'one two three' | wordcount }}|{{ 42 | string }}{{ '7' | int + 1 }}|{{ '2.5' | float }}|{{ -3 | abs }}|{{ 2.567 | round(2) }}", {}),
    "filters_lists": ("{{ [3, 1, 2] | sort }}|{{ [3, 1, 2] | sort(reverse=true) }}|{{ [1, 2, 3] | first }}{{ [1, 2, 3] | last }}|{{ [1, 2] | reverse | list }}|{{ 'abc' | list }}|{{ [1, 1, 2] | unique | list }}|{{ [1, 2, 3] | sum }}|{{ [4, 2, 9] | min }}{{ [4, 2, 9] | max }}|{{ ['a', 'b'] | join('-') }}|{{ [1, 2] | join }}", {}),
    "filters_default": ("{{ missing | default('d') }}|{{ '' | default('e') }}|{{ '' | default('f', true) }}|{{ none | d('g') }}|{{ x | default(1) }}", {"x": 0}),
    "filters_attr": ("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}|{{ msgs | rejectattr('role', 'equalto', 'user') | list | length }}|{{ msgs | map(attribute='missing', default='-') | join }}|{{ msgs | selectattr('flag') | list | length }}|{{ msgs | map(attribute='content') | map('upper') | join }}", {"msgs": [{"role": "user", "content": "a", "flag": True}, {"role": "bot", "content": "b"}, {"role": "user", "content": "c"}]}),
    "filters_dict": ("{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}|{% for k, v in d.items() %}{{ k }}{% endfor %}|{{ d.keys() | list }}|{{ d.values() | list }}|{{ d.get('a') }}{{ d.get('z', 'none') }}{{ d.get('z') }}|{% for k, v in d | dictsort %}{{ k }}{% endfor %}|{% for k in d %}{{ k }}{% endfor %}", {"d": {"b": 2, "a": 1}}),
    "tojson": ("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'é\"\\n' | tojson }}|{{ [] | tojson }}|{{ {} | tojson(indent=4) }}|{{ 1.5 | tojson }}", {"x": {"name": "f", "args": [1, None, True, "s"], "nested": {"k": []}}}),
    "indent_filter": ("{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(4, true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}", {}),
    "tests": ("{{ x is defined }}{{ y is undefined }}{{ none is none }}{{ 's' is string }}{{ 1 is number }}{{ 1 is integer }}{{ 1.5 is float }}{{ true is boolean }}{{ {} is mapping }}{{ [] is iterable }}{{ 's' is sequence }}{{ 4 is even }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}{{ 1 is eq 1 }}{{ 'A' is upper }}{{ 'a' is lower }}{{ x is not none }}{{ 2 is gt 1 }}{{ 'a' is in 'abc' }}{{ true is true }}{{ 0 is false }}", {"x": 1}),
    "subscripts_slices": ("{{ l[0] }}{{ l[-1] }}{{ l[1:] }}{{ l[:2] }}{{ l[::-1] }}{{ l[::2] }}{{ l[-2:] }}{{ s[1:3] }}{{ s[::-1] }}{{ s[0] }}{{ l[10] }}|{{ d['k'] }}{{ d.k }}{{ d.missing }}|{{ l.0 }}", {"l": [1, 2, 3, 4], "s": "hello", "d": {"k": "v"}}),
    "loop_variables": ("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem | default('-') }}{{ loop.nextitem | default('-') }};{% endfor %}", {"xs": ["a", "b", "c"]}),
    "loop_filter_else": ("{% for x in xs if x > 1 %}{{ x }}{{ loop.index }}{% else %}empty{% endfor %}|{% for x in [] %}{{ x }}{% else %}none{% endfor %}", {"xs": [1, 2, 3]}),
    "loop_break_continue": ("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x > 4 %}{% break %}{% endif %}{{ x }}{% endfor %}|{{ range(3) | list }}{{ range(1, 7, 2) | list }}{{ range(5, 0, -2) | list }}", {}),
    "loop_scoping": ("{% set count = 0 %}{% for x in [1, 2] %}{% set count = count + x %}{% endfor %}{{ count }}|{% set ns = namespace(total=0, seen=false) %}{% for x in [1, 2, 3] %}{% set ns.total = ns.total + x %}{% set ns.seen = true %}{% endfor %}{{ ns.total }}{{ ns.seen }}", {}),
    "nested_loops": ("{% for row in rows %}{% for c in row %}{{ loop.index }}{{ c }}{% endfor %}/{{ loop.index }};{% endfor %}", {"rows": [["a", "b"], ["c"]]}),
    "tuple_unpack": ("{% for a, b in pairs %}{{ a }}-{{ b }} {% endfor %}{% set x, y = [1, 2] %}{{ x }}{{ y }}", {"pairs": [[1, "one"], [2, "two"]]}),
    "set_block": ("{% set greeting %}Hello {{ name }}!{% endset %}[{{ greeting }}]{{ greeting | length }}", {"name": "Ann"}),
    "macro": ("{% macro render(item, sep=', ', upper=false) %}{{ item.name | upper if upper else item.name }}{{ sep }}{% endmacro %}{% for i in items %}{{ render(i) }}{{ render(i, ' | ', upper=true) }}{% endfor %}", {"items": [{"name": "x"}, {"name": "y"}]}),
    "whitespace_control": ("a  {{- ' b ' -}}  c\n{%- if true %}\n  d\n{%- endif %}\n  {{ 'e' }}  \n{#- comment -#}\n f", {}),
    "trim_lstrip_blocks": ("<ul>\n  {% for x in xs %}\n    <li>{{ x }}</li>\n  {% endfor %}\n</ul>\n  {%+ if true %}kept{% endif %}\n{# note #}\nend\n", {"xs": [1, 2]}),
    "raw_block": ("{% raw %}{{ not evaluated }} {% if %}{% endraw %}|{{ 1 }}", {}),
    "filter_block": ("{% filter upper %}shout {{ word }}{% endfilter %}", {"word": "this"}),
    "comments_and_newlines": ("line1\n{# a comment #}\nline2\n{% if true %}\nline3\n{% endif %}\nline4", {}),
    "strings_escapes": ("{{ 'tab\\there' }}|{{ \"dq 'x'\" }}|{{ 'a' 'b' }}|{{ '\\\\' }}", {}),
    "dict_literal_loop": ("{% for role, tag in {'user': 'U', 'assistant': 'A'}.items() %}{{ role }}:{{ tag }} {% endfor %}", {}),
    "is_not_and_precedence": ("{{ not x is defined }}{{ x is defined and y is not defined }}{{ -2 | abs }}{{ (1 + 2) | string }}{{ 'n' ~ 2 | string }}", {"x": 1}),
    "raise": ("{% if messages | length > 1 %}{{ raise_exception('Too many messages: ' ~ messages | length) }}{% endif %}ok", {"messages": [1, 2]}),
    "content_parts": ("{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}{% for part in m.content %}{% if part.type == 'text' %}{{ part.text }}{% endif %}{% endfor %}{% endif %};{% endfor %}", {"messages": [{"content": "plain"}, {"content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]}]}),
}

CHATML_TOOLS = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

HEADERS = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: 26 Jul 2024\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL_SYSTEM_LAST = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

THINKING = """{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if message.role == "user" or message.role == "system" %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

TULU = """{% for message in messages %}
{% if message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] }}
{% elif message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] }}
{% elif message['role'] == 'assistant' %}
{% if not loop.last %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% else %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>\\n' }}
{% endif %}
{% endfor %}"""

GEMMA_LIKE = """{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"""

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}
CHATS = {
    "chatml_tools": (CHATML_TOOLS, [(NO_SYSTEM, {"add_generation_prompt": True}), (CHAT, {"tools": TOOLS}),
                                    (TOOL_CHAT, {"tools": TOOLS, "add_generation_prompt": True})]),
    "headers": (HEADERS, [(CHAT, {"add_generation_prompt": True}), (NO_SYSTEM, {})]),
    "mistral_system_last": (MISTRAL_SYSTEM_LAST, [(CHAT, {}), (NO_SYSTEM, {}), (CHAT[:2] + CHAT[1:2], {})]),
    "thinking": (THINKING, [(THINK_CHAT, {"add_generation_prompt": True}), (THINK_CHAT, {"add_generation_prompt": True, "enable_thinking": False}),
                            (THINK_CHAT[:2], {})]),
    "tulu": (TULU, [(CHAT, {"add_generation_prompt": True}), (NO_SYSTEM, {})]),
    "gemma_like": (GEMMA_LIKE, [(NO_SYSTEM, {"add_generation_prompt": True}), (CHAT, {})]),
}


def render(template, context):
    try:
        return {"output": env.from_string(template).render(**context)}
    except Raised as e:
        return {"error": str(e)}


def main() -> None:
    lines = []
    for name, (template, context) in FEATURES.items():
        lines.append({"name": name, "template": template, "context": context, **render(template, context)})
    for name, (template, runs) in CHATS.items():
        for k, (messages, extra) in enumerate(runs):
            context = {"messages": messages, "add_generation_prompt": False, **SPECIALS, **extra}
            lines.append({"name": f"{name}_{k}", "template": template, "context": context, **render(template, context)})
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
