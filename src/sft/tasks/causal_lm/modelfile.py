"""The Ollama Modelfile of a GGUF export: the run's chat template in Ollama's Go-template form, its stop tokens and
generation settings, so `ollama create NAME -f Modelfile` needs nothing else.

Ollama does not run Jinja, and a template written by hand drifts from the trained one (the reported way an exported
model stops answering like the trained one). So the Go template is derived from the chat template itself: conversations
of marker strings are rendered with the run's Jinja template and cut into what it writes around each role's content
(and at the start without a system message, and as the generation prompt). The derived pieces are then rendered the
way the Go template renders them and compared with the Jinja template on the run's own held-out conversations; a
template whose turns are not pieces around the content (one that moves a system message into the first user turn,
or trims the content) is refused rather than approximated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sft.data.chat import end_tokens
from sft.errors import UserError

MARK = {"system": "SFTMARKSYSTEM", "user": "SFTMARKUSERONE", "assistant": "SFTMARKANSWER", "user2": "SFTMARKUSERTWO"}


@dataclass(frozen=True)
class Pieces:
    """What a chat template writes around each message's content. `start`: written first when the conversation does
    not open with a system message (a default system prompt, a BOS); `system` None when the template takes none;
    `end_token`: the special token that closes an answer (what generation stops at)."""
    start: str
    system: tuple[str, str] | None
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    end_token: str | None

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        """What the Go template of `go_template` writes (Ollama adds the generation prompt after a last message
        that is not an answer)."""
        text = self.start if not messages or messages[0]["role"] != "system" else ""
        for m in messages:
            before, after = {"system": self.system or ("", ""), "user": self.user, "assistant": self.assistant}[
                m["role"]]
            text += before + m["content"] + after
        return text + (self.generation if generation_prompt else "")


def turn_pieces(tokenizer) -> Pieces:
    """Cut the chat template's renders of marker conversations into the pieces around each role's content."""
    def render(messages, generation_prompt=False) -> str:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # templates raise what they like (jinja's TemplateError, ValueError) on odd turns
            raise UserError(f"the chat template cannot render {[m['role'] for m in messages]}: {e}") from None

    def unlike(what: str) -> UserError:
        return UserError(f"the chat template is not a sequence of turns around each message ({what}); Ollama's "
                         f"template cannot be derived from it")

    user = {"role": "user", "content": MARK["user"]}
    answer = {"role": "assistant", "content": MARK["assistant"]}
    user2 = {"role": "user", "content": MARK["user2"]}
    one = render([user])
    if one.count(MARK["user"]) != 1:
        raise unlike("the user's text is not written once")
    head, user_after = one.split(MARK["user"])
    prompted = render([user], True)
    if not prompted.startswith(one):
        raise unlike("the generation prompt is not appended")
    pair = render([user, answer])
    if not pair.startswith(one) or pair[len(one):].count(MARK["assistant"]) != 1:
        raise unlike("an answer is not appended after the user's turn")
    answer_before, answer_after = pair[len(one):].split(MARK["assistant"])
    three = render([user, answer, user2])
    rest = three[len(pair):]
    if not three.startswith(pair) or rest.count(MARK["user2"]) != 1 or not rest.endswith(MARK["user2"] + user_after):
        raise unlike("a second user turn is not appended")
    user_before = rest[:rest.index(MARK["user2"])]
    if not head.endswith(user_before):
        raise unlike("the first user turn is written unlike the others")
    start = head[:len(head) - len(user_before)]
    system = None
    try:
        with_system = render([{"role": "system", "content": MARK["system"]}, user])
    except UserError:
        with_system = None  # a template without system messages
    if with_system is not None:
        tail = user_before + MARK["user"] + user_after
        if with_system.count(MARK["system"]) != 1 or not with_system.endswith(tail):
            raise unlike("a system message is not a turn of its own")
        before, after = with_system[:-len(tail)].split(MARK["system"])
        system = (before, after)
    closers = sorted(end_tokens(tokenizer), key=len, reverse=True)
    end = next((t for t in closers if answer_after.lstrip().startswith(t)), None)
    if end is None and tokenizer.eos_token:
        end = tokenizer.eos_token  # training appends EOS to answers the template closes with no special token
    return Pieces(start, system, (user_before, user_after), (answer_before, answer_after), prompted[len(one):], end)


def end_of_turn(tokenizer) -> str | None:
    """The token that closes an answer: the template's end-of-turn marker, else EOS."""
    try:
        return turn_pieces(tokenizer).end_token
    except UserError:
        return tokenizer.eos_token


def go_template(p: Pieces) -> str:
    """Ollama's TEMPLATE (Go text/template over .Messages): no whitespace-trimming actions, so the pieces' newlines
    stay exactly as the Jinja template writes them."""
    def lit(text: str) -> str:
        if '"""' in text:
            raise UserError('the chat template writes """, which a Modelfile TEMPLATE cannot hold')
        return text.replace("{{", '{{ "{{" }}')

    system = (f'{{{{ if eq $m.Role "system" }}}}{lit(p.system[0])}{{{{ $m.Content }}}}{lit(p.system[1])}{{{{ else '
              if p.system else "{{ ")
    return ('{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}' + lit(p.start) + "{{ end }}"
            '{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
            + system + f'if eq $m.Role "user" }}}}{lit(p.user[0])}{{{{ $m.Content }}}}{lit(p.user[1])}'
            f'{{{{ else if eq $m.Role "assistant" }}}}{lit(p.assistant[0])}{{{{ $m.Content }}}}{lit(p.assistant[1])}'
            '{{ end }}{{ if and $last (ne $m.Role "assistant") }}' + lit(p.generation) + "{{ end }}{{ end }}")


def modelfile(file: str, tokenizer, stop: list[str], gen, conversations: list[list[dict]]) -> str:
    """The Modelfile text, after the derived template proved to render `conversations` (and their prompts) as the
    chat template does."""
    pieces = turn_pieces(tokenizer)
    for chat in conversations:
        prompt = chat[:max(i for i, m in enumerate(chat) if m["role"] != "assistant") + 1]
        for messages, generation_prompt in ((chat, chat[-1]["role"] != "assistant"), (prompt, True)):
            if pieces.system is None and any(m["role"] == "system" for m in messages):
                raise UserError("the chat template takes no system message but the data has one")
            jinja = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
            if pieces.render(messages, generation_prompt) != jinja:
                raise UserError("the chat template does not render the run's conversations as pieces around each "
                                "message (it rewrites the content or moves turns); Ollama's template cannot be "
                                "derived from it")
    lines = [f"# `ollama create NAME -f Modelfile` in this folder: {file} with the chat template and stop tokens",
             "# the run trained with (written by `sft export --format gguf`)", f"FROM ./{file}",
             f'TEMPLATE """{go_template(pieces)}"""']
    lines += [f"PARAMETER stop {json.dumps(token, ensure_ascii=False)}" for token in stop]
    lines += [f"PARAMETER temperature {gen.temperature:g}", f"PARAMETER top_p {gen.top_p:g}",
              "PARAMETER top_k 0", "PARAMETER repeat_penalty 1", f"PARAMETER num_predict {gen.max_new_tokens}"]
    return "\n".join(lines) + "\n"
