// A small Markdown renderer that builds DOM nodes and never HTML strings.
//
// Model output is untrusted: whatever it contains (`<script>`, `<img onerror>`, a
// `javascript:` link) must end up as visible text, never as markup. So this renders a
// deliberately small dialect — paragraphs, headings, lists, block quotes, rules, fenced code,
// inline code, bold, italic, strike-through and http(s)/mailto links — by creating elements
// and setting `textContent`. It is re-run on the whole message as tokens stream in, and an
// unclosed code fence renders as code until it closes.

import { h } from './dom.js';

/** Renders `source` into a DocumentFragment. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  const lines = source.replace(/\r\n?/g, '\n').split('\n');
  let i = 0;
  let paragraph = [];

  const flushParagraph = () => {
    if (paragraph.length === 0) return;
    const p = h('p');
    paragraph.forEach((line, n) => {
      if (n > 0) p.append(h('br'));
      appendInline(p, line);
    });
    fragment.append(p);
    paragraph = [];
  };

  while (i < lines.length) {
    const line = lines[i];
    const fence = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/.exec(line);
    if (fence) {
      flushParagraph();
      const marker = fence[1];
      const lang = fence[2];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(marker)) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence (or the end, while streaming)
      fragment.append(codeBlock(body.join('\n'), lang));
      continue;
    }
    const heading = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      flushParagraph();
      // Headings inside a message sit below the page's own h1/h2, so they start at h3.
      const level = Math.min(6, heading[1].length + 2);
      const node = h(`h${level}`);
      appendInline(node, heading[2]);
      fragment.append(node);
      i += 1;
      continue;
    }
    if (/^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flushParagraph();
      fragment.append(h('hr'));
      i += 1;
      continue;
    }
    if (/^\s{0,3}>/.test(line)) {
      flushParagraph();
      const quoted = [];
      while (i < lines.length && /^\s{0,3}>/.test(lines[i])) {
        quoted.push(lines[i].replace(/^\s{0,3}>\s?/, ''));
        i += 1;
      }
      const quote = h('blockquote');
      quote.append(renderMarkdown(quoted.join('\n')));
      fragment.append(quote);
      continue;
    }
    const item = /^\s{0,3}([-*+]|\d{1,9}[.)])\s+(.*)$/.exec(line);
    if (item) {
      flushParagraph();
      const ordered = /\d/.test(item[1]);
      const list = h(ordered ? 'ol' : 'ul');
      if (ordered && parseInt(item[1], 10) !== 1) list.setAttribute('start', String(parseInt(item[1], 10)));
      while (i < lines.length) {
        const next = /^\s{0,3}([-*+]|\d{1,9}[.)])\s+(.*)$/.exec(lines[i]);
        if (!next || /\d/.test(next[1]) !== ordered) break;
        const li = h('li');
        appendInline(li, next[2]);
        i += 1;
        // Indented continuation lines belong to the item.
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !/^\s{0,3}([-*+]|\d{1,9}[.)])\s+/.test(lines[i])) {
          li.append(h('br'));
          appendInline(li, lines[i].trim());
          i += 1;
        }
        list.append(li);
      }
      fragment.append(list);
      continue;
    }
    if (line.trim() === '') {
      flushParagraph();
      i += 1;
      continue;
    }
    paragraph.push(line);
    i += 1;
  }
  flushParagraph();
  return fragment;
}

function codeBlock(text, lang) {
  const code = h('code', lang ? { class: `language-${lang.replace(/[^\w+#.-]/g, '')}` } : {});
  code.textContent = text;
  const copy = h('button', { type: 'button', class: 'copy', 'aria-label': 'Copy code' }, 'Copy');
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(text);
      copy.textContent = 'Copied';
    } catch {
      copy.textContent = 'Copy failed';
    }
    setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
  });
  const label = lang ? h('span', { class: 'code-lang' }, lang) : null;
  return h('div', { class: 'code-block' }, h('div', { class: 'code-bar' }, label, copy), h('pre', { tabindex: '0' }, code));
}

// Inline spans, tried left to right: code, bold, italic, strike-through, links.
const INLINE = new RegExp([
  '(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)', // 1,2 code
  '\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*', // 3 bold
  '(?<![\\w])__(?=\\S)([\\s\\S]*?\\S)__(?![\\w])', // 4 bold
  '\\*(?=[^\\s*])([^*]*?[^\\s*]|[^\\s*])\\*', // 5 italic
  '(?<![\\w])_(?=[^\\s_])([^_]*?[^\\s_]|[^\\s_])_(?![\\w])', // 6 italic
  '~~(?=\\S)([\\s\\S]*?\\S)~~', // 7 strike
  '\\[([^\\]\\n]+)\\]\\(\\s*([^)\\s]+)\\s*\\)', // 8,9 link
].join('|'), 'g');

/** Appends the inline Markdown of `text` to `parent`, as text nodes and elements. */
export function appendInline(parent, text) {
  let last = 0;
  // matchAll iterates over a copy of the regex, so the recursion below (bold inside a link…)
  // cannot reset the position of this loop.
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    if (m[2] !== undefined) {
      parent.append(h('code', {}, m[2]));
    } else if (m[3] !== undefined || m[4] !== undefined) {
      const strong = h('strong');
      appendInline(strong, m[3] ?? m[4]);
      parent.append(strong);
    } else if (m[5] !== undefined || m[6] !== undefined) {
      const em = h('em');
      appendInline(em, m[5] ?? m[6]);
      parent.append(em);
    } else if (m[7] !== undefined) {
      const del = h('del');
      appendInline(del, m[7]);
      parent.append(del);
    } else if (m[8] !== undefined) {
      const href = safeUrl(m[9]);
      if (href) {
        const a = h('a', { href, rel: 'noopener noreferrer nofollow', target: '_blank' });
        appendInline(a, m[8]);
        parent.append(a);
      } else {
        parent.append(document.createTextNode(m[0]));
      }
    }
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

/** The URL if it is absolute http(s) or mailto; anything else (javascript:, data:, relative) → null. */
export function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return ['http:', 'https:', 'mailto:'].includes(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}
