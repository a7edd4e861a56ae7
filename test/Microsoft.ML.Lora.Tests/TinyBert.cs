using System.Globalization;
using Microsoft.ML.Lora.Models;
using TorchSharp;

namespace Microsoft.ML.Lora.Tests;

/// <summary>A tiny random BERT saved as a Hugging Face folder (config.json, model.safetensors, vocab.txt), and toy data.</summary>
internal static class TinyBert
{
    public static readonly string[] Positive = ["good", "great", "love", "nice", "fine", "happy"];
    public static readonly string[] Negative = ["bad", "awful", "hate", "poor", "worst", "sad"];
    public static readonly string[] Neutral = ["table", "chair", "paper", "window", "door", "box"];
    public static readonly string[] Filler = ["the", "movie", "food", "service", "was", "is", "it", "this", "very", "really", "a", "and"];

    /// <summary>Writes a random BERT (hidden 32, 2 layers, 4 heads; with a pooler when asked) to <paramref name="directory"/>; returns its descriptor.</summary>
    public static PretrainedModel Create(string directory, long seed = 1, bool pooler = false)
    {
        Directory.CreateDirectory(directory);
        var vocab = new List<string> { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "." };
        vocab.AddRange(Positive);
        vocab.AddRange(Negative);
        vocab.AddRange(Neutral);
        vocab.AddRange(Filler);
        File.WriteAllLines(Path.Combine(directory, "vocab.txt"), vocab);
        var config = new BertConfig
        {
            VocabSize = vocab.Count,
            HiddenSize = 32,
            NumHiddenLayers = 2,
            NumAttentionHeads = 4,
            IntermediateSize = 64,
            MaxPositionEmbeddings = 64,
            HiddenDropoutProb = 0.1,
            AttentionProbsDropoutProb = 0.1,
        };
        torch.random.manual_seed(seed);
        using var model = new BertModel(config, pooler);
        model.SaveHuggingFace(directory);
        return PretrainedModel.FromHuggingFaceFolder(directory);
    }

    /// <summary>Options that train the tiny BERT on the toy data in seconds (shared with the CUDA tests, which the GPU check links).</summary>
    public static LoraFineTuningOptions FastOptions(PretrainedModel model) => new()
    {
        BaseModel = model,

        // Every linear layer: a tiny random encoder needs more adapted capacity than MiniLM's default query/value.
        TargetModules = ["query", "key", "value", "dense"],
        Rank = 4,
        Alpha = 8,
        BatchSize = 16,
        MaxEpochs = 20,
        LearningRate = 1e-2,
        MaxSequenceLength = 16,
        InferenceBatchSize = 7,
    };

    /// <summary>Seeded toy sentences; class 0 uses positive words, 1 negative, 2 neutral.</summary>
    public static List<(string Text, int Class)> Sentences(int count, int classes, int seed)
    {
        var random = new Random(seed);
        var words = new[] { Positive, Negative, Neutral };
        var result = new List<(string, int)>(count);
        for (int i = 0; i < count; i++)
        {
            int cls = i % classes;
            var tokens = new List<string>();
            int length = random.Next(3, 7);
            for (int t = 0; t < length; t++)
            {
                tokens.Add(Filler[random.Next(Filler.Length)]);
            }

            for (int k = 0; k < 2; k++)
            {
                tokens.Insert(random.Next(tokens.Count + 1), words[cls][random.Next(words[cls].Length)]);
            }

            result.Add((string.Join(' ', tokens), cls));
        }

        return result;
    }

    /// <summary>
    /// Seeded, very uneven texts, all different: empty, one to three words, 40 to 120 words (longer than any test's
    /// MaxSequenceLength), and runs of '.' (each dot is a token: a short text of many tokens, so ordering by characters and
    /// by tokens differ).
    /// </summary>
    public static List<string> UnevenTexts(int count, int seed)
    {
        var random = new Random(seed);
        var words = Filler.Concat(Positive).Concat(Negative).ToArray();
        string Words(int n) => string.Join(' ', Enumerable.Range(0, n).Select(_ => words[random.Next(words.Length)]));
        var texts = new List<string>(count);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        while (texts.Count < count)
        {
            string text = random.Next(4) switch
            {
                0 => seen.Contains(string.Empty) ? "." : string.Empty,
                1 => Words(random.Next(1, 4)),
                2 => Words(random.Next(40, 121)),
                _ => Words(1) + " " + new string('.', random.Next(5, 60)),
            };
            if (seen.Add(text))
            {
                texts.Add(text);
            }
        }

        return texts;
    }

    /// <summary>Deletes a folder made by <see cref="TempDirectory"/>; a file still open (e.g. on another thread) leaves it for the OS.</summary>
    public static void DeleteTempDirectory(string path)
    {
        try
        {
            Directory.Delete(path, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    public static string TempDirectory()
    {
        string path = Path.Combine(Path.GetTempPath(), "mllora-tests-" + Guid.NewGuid().ToString("N", CultureInfo.InvariantCulture));
        Directory.CreateDirectory(path);
        return path;
    }
}
