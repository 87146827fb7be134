// The model's Markdown as safe HTML: marked parses it (GitHub's dialect), DOMPurify sanitises the
// result (vendor/README.md says which versions and under which licences).
//
// Nothing the model writes becomes markup of its own: raw HTML in the text (a block or an inline
// tag) is rendered as the literal text it is, images become links (a page that loads whatever
// URL a model names would leak to that host), and DOMPurify then keeps only the tags Markdown
// itself makes, with no attributes beyond a link's href/title and a code block's language class.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

const escapeHtml = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const marked = new Marked({
  gfm: true,
  breaks: true, // a model's single newlines are meant as line breaks
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    image({ href, title, text }) {
      return `<a href="${escapeHtml(href)}"${title ? ` title="${escapeHtml(title)}"` : ""}>${escapeHtml(text || href)}</a>`;
    },
  },
});

const ALLOWED_TAGS = [
  "p", "br", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "a",
  "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td", "span",
];
const ALLOWED_ATTR = ["href", "title", "class", "start", "align"];

const purify = DOMPurify(window);
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
  if (node.hasAttribute("class") && !/^language-[\w+#.-]+$/.test(node.getAttribute("class"))) node.removeAttribute("class");
});

/** A DocumentFragment of `text` rendered as Markdown (safe to append). */
export function renderMarkdown(text) {
  const html = marked.parse(String(text ?? ""), { async: false });
  return purify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
    RETURN_DOM_FRAGMENT: true,
  });
}
