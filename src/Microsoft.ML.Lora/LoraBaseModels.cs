using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora;

/// <summary>
/// Where <c>mlContext.Model.Load</c> looks for the base model of a LoRA model file, and how models share bases in this
/// process. A model file records its base's kind, location and weights SHA-256; the base is found by its SHA-256, in this
/// order: the embedded MiniLM (when the file names it); bases already loaded in this process; the base named by the
/// environment variable <see cref="BaseModelVariable"/>; bases registered with <see cref="Register"/>; the folders in
/// <see cref="SearchDirectories"/> and in the environment variable <see cref="SearchPathVariable"/>; the recorded location.
/// A candidate whose weights have another SHA-256 is never used; when nothing matches, the error lists every place tried.
/// </summary>
/// <remarks>
/// <para>Every loaded base is held once per (SHA-256, device, dtype) and shared by all the models that use it, trained
/// (<c>Fit</c>) or loaded; it is freed when the last of them is disposed. A second model on the same base reads and hashes
/// nothing: fingerprints are remembered by file path, size and last-write time.</para>
/// <para>Models on a shared base run their LoRA updates beside the frozen base layers (unmerged), so no model ever changes
/// the shared weights. <see cref="PrivateMergedCopies"/> trades memory for the merged layers' speed.</para>
/// <para>The settings are process-wide and thread-safe; set them before loading or training the models they concern.</para>
/// </remarks>
public static class LoraBaseModels
{
    /// <summary>Environment variable naming one base model: a Hugging Face folder, or an .onnx file with vocab.txt beside it.</summary>
    public const string BaseModelVariable = "MICROSOFT_ML_LORA_BASE_MODEL";

    /// <summary>
    /// Environment variable holding search directories, separated by <see cref="Path.PathSeparator"/> (':' on Linux and
    /// macOS, ';' on Windows); searched as <see cref="AddSearchDirectory"/> directories are.
    /// </summary>
    public const string SearchPathVariable = "MICROSOFT_ML_LORA_BASE_MODEL_PATH";

    private static readonly Lock Gate = new();
    private static readonly List<PretrainedModel> RegisteredBases = [];
    private static readonly List<string> Directories = [];
    private static volatile bool privateMergedCopies;

    /// <summary>The bases registered with <see cref="Register"/>, in registration order (a snapshot).</summary>
    public static IReadOnlyList<PretrainedModel> Registered
    {
        get
        {
            lock (Gate)
            {
                return RegisteredBases.ToList();
            }
        }
    }

    /// <summary>The directories added with <see cref="AddSearchDirectory"/>, in order (a snapshot; full paths).</summary>
    public static IReadOnlyList<string> SearchDirectories
    {
        get
        {
            lock (Gate)
            {
                return Directories.ToList();
            }
        }
    }

    /// <summary>
    /// False (default): models share their base and run LoRA unmerged on it. True: models trained or loaded afterwards give
    /// each adapted layer a private copy of its base weight with the LoRA update merged in (float32 on the CPU only; other
    /// layers stay shared). Unmerged costs a little time per row (two small matrix products per adapted layer); merged
    /// costs the memory of the adapted weights per model. See the README's Serving section for measured numbers.
    /// </summary>
    public static bool PrivateMergedCopies
    {
        get => privateMergedCopies;
        set => privateMergedCopies = value;
    }

    /// <summary>Number of distinct bases (per device and dtype) held in memory by the models alive in this process.</summary>
    public static int LoadedCount => BaseModelCache.Count;

    /// <summary>
    /// Registers a base model that model files may name by SHA-256, e.g.
    /// <c>LoraBaseModels.Register(PretrainedModel.FromHuggingFaceFolder(dir))</c>. Nothing is read until a model file needs
    /// it. Registering the same descriptor twice keeps one entry.
    /// </summary>
    /// <param name="baseModel">The base's descriptor.</param>
    /// <exception cref="ArgumentNullException"><paramref name="baseModel"/> is null.</exception>
    public static void Register(PretrainedModel baseModel)
    {
        ArgumentNullException.ThrowIfNull(baseModel);
        lock (Gate)
        {
            if (!RegisteredBases.Contains(baseModel))
            {
                RegisteredBases.Add(baseModel);
            }
        }
    }

    /// <summary>
    /// Adds a directory to search for bases: the directory itself and each of its immediate subdirectories that is a
    /// Hugging Face model folder (has config.json), and each .onnx file in them with a vocab.txt beside it. Candidates whose
    /// folder or file name equals the recorded one's are tried first. Nothing is read until a model file needs a base.
    /// </summary>
    /// <param name="directory">The directory (need not exist yet).</param>
    /// <exception cref="ArgumentException"><paramref name="directory"/> is null or empty.</exception>
    public static void AddSearchDirectory(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        string full = Path.GetFullPath(directory);
        lock (Gate)
        {
            if (!Directories.Contains(full, StringComparer.Ordinal))
            {
                Directories.Add(full);
            }
        }
    }

    /// <summary>Forgets every registered base and search directory (bases in use stay loaded).</summary>
    public static void Clear()
    {
        lock (Gate)
        {
            RegisteredBases.Clear();
            Directories.Clear();
        }
    }
}
