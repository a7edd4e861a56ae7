using System.Globalization;
using System.Text;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// Hugging Face's BERT BasicTokenizer (pre-WordPiece step), written out because Microsoft.ML.Tokenizers 2.0.1's
/// basic tokenization differs from it: that one removes tab/new line instead of treating them as spaces, and drops
/// symbol characters (<c>$ + = ^ ~ | &lt; &gt;</c>, emoji, …) that Hugging Face keeps as tokens or <c>[UNK]</c>.
/// Steps, as in transformers' <c>BasicTokenizer</c>: remove NUL, U+FFFD, lone surrogates and control characters
/// (Cc, Cf; tab, CR and LF count as whitespace); map whitespace (Zs, tab, CR, LF) to spaces; NFC; put spaces around
/// CJK ideographs; split on whitespace; keep special tokens (e.g. <c>[SEP]</c>) whole; lower-case and/or strip accents
/// (NFD, drop Mn); split off punctuation (ASCII non-alphanumerics and every P* category) as separate words.
/// </summary>
internal sealed class BasicTokenizer
{
    private readonly bool lowerCase;
    private readonly bool stripAccents;
    private readonly HashSet<string> neverSplit;

    public BasicTokenizer(bool lowerCase, bool stripAccents, IEnumerable<string> neverSplit)
    {
        this.lowerCase = lowerCase;
        this.stripAccents = stripAccents;
        this.neverSplit = new HashSet<string>(neverSplit, StringComparer.Ordinal);
    }

    /// <summary>The words of <paramref name="text"/>, produced lazily (so a caller can stop early on very long text).</summary>
    /// <remarks>Special tokens (e.g. <c>[SEP]</c>) are recognised anywhere in the raw text, as the fast tokenizers'
    /// added tokens are, and split the text around them.</remarks>
    public IEnumerable<string> Words(string text)
    {
        int start = 0;
        while (start < text.Length)
        {
            var (index, special) = NextSpecial(text, start);
            int end = index < 0 ? text.Length : index;
            foreach (var w in SegmentWords(text[start..end]))
            {
                yield return w;
            }

            if (index < 0)
            {
                yield break;
            }

            yield return special!;
            start = index + special!.Length;
        }
    }

    private (int Index, string? Token) NextSpecial(string text, int start)
    {
        int best = -1;
        string? token = null;
        foreach (string candidate in neverSplit)
        {
            int i = text.IndexOf(candidate, start, StringComparison.Ordinal);
            if (i >= 0 && (best < 0 || i < best || (i == best && candidate.Length > token!.Length)))
            {
                best = i;
                token = candidate;
            }
        }

        return (best, token);
    }

    private IEnumerable<string> SegmentWords(string text)
    {
        var word = new StringBuilder();
        foreach (var rune in Clean(text))
        {
            bool cjk = IsCjk(rune.Value);
            if (rune.Value == ' ' || cjk)
            {
                foreach (var w in Finish(word))
                {
                    yield return w;
                }

                if (cjk)
                {
                    yield return rune.ToString();
                }

                continue;
            }

            word.Append(rune.ToString());
        }

        foreach (var w in Finish(word))
        {
            yield return w;
        }
    }

    private List<string> Finish(StringBuilder word)
    {
        if (word.Length == 0)
        {
            return [];
        }

        string token = word.ToString().Normalize(NormalizationForm.FormC);
        word.Clear();
        if (neverSplit.Contains(token))
        {
            return [token];
        }

        if (lowerCase)
        {
            token = ToLowerFull(token);
        }

        if (stripAccents)
        {
            token = StripAccents(token);
        }

        return SplitOnPunctuation(token);
    }

    /// <summary>
    /// Lower-cases character by character as Hugging Face tokenizers do (Rust's <c>char::to_lowercase</c>): as .NET's
    /// invariant mapping, except that U+0130 (İ) becomes "i\u0307" (so accent stripping leaves "i"). No final-sigma rule.
    /// </summary>
    private static string ToLowerFull(string token) =>
        token.Contains('\u0130', StringComparison.Ordinal)
            ? token.Replace("\u0130", "i\u0307", StringComparison.Ordinal).ToLowerInvariant()
            : token.ToLowerInvariant();

    private static string StripAccents(string token)
    {
        var builder = new StringBuilder(token.Length);
        foreach (var rune in token.Normalize(NormalizationForm.FormD).EnumerateRunes())
        {
            if (Rune.GetUnicodeCategory(rune) != UnicodeCategory.NonSpacingMark)
            {
                builder.Append(rune.ToString());
            }
        }

        return builder.ToString();
    }

    private static List<string> SplitOnPunctuation(string token)
    {
        var result = new List<string>();
        var current = new StringBuilder();
        foreach (var rune in token.EnumerateRunes())
        {
            if (IsPunctuation(rune))
            {
                if (current.Length > 0)
                {
                    result.Add(current.ToString());
                    current.Clear();
                }

                result.Add(rune.ToString());
            }
            else
            {
                current.Append(rune.ToString());
            }
        }

        if (current.Length > 0)
        {
            result.Add(current.ToString());
        }

        return result;
    }

    /// <summary>Code points with invalid, NUL, U+FFFD and control characters removed and whitespace mapped to ' '.</summary>
    private static IEnumerable<Rune> Clean(string text)
    {
        int i = 0;
        while (i < text.Length)
        {
            if (Rune.DecodeFromUtf16(text.AsSpan(i), out var rune, out int consumed) != System.Buffers.OperationStatus.Done)
            {
                i += Math.Max(consumed, 1);
                continue;
            }

            i += consumed;
            int cp = rune.Value;
            if (cp == 0 || cp == 0xFFFD)
            {
                continue;
            }

            if (cp is ' ' or '\t' or '\n' or '\r' || Rune.GetUnicodeCategory(rune) == UnicodeCategory.SpaceSeparator)
            {
                yield return new Rune(' ');
                continue;
            }

            var category = Rune.GetUnicodeCategory(rune);
            if (category is UnicodeCategory.Control or UnicodeCategory.Format)
            {
                continue;
            }

            yield return rune;
        }
    }

    private static bool IsPunctuation(Rune rune)
    {
        int cp = rune.Value;
        if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126))
        {
            return true;
        }

        return Rune.GetUnicodeCategory(rune) switch
        {
            UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation or UnicodeCategory.OpenPunctuation
                or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
                or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation => true,
            _ => false,
        };
    }

    /// <summary>The CJK Unified Ideographs blocks Hugging Face treats as single-character words.</summary>
    private static bool IsCjk(int cp) =>
        (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF)
        || (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF)
        || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}
