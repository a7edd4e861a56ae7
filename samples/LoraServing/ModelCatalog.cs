using Microsoft.ML;

namespace LoraServing;

/// <summary>The models a server holds, by name (the file name without extension).</summary>
public sealed class ModelCatalog : IDisposable
{
    private readonly Dictionary<string, ServedModel> models = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Loads every <c>.zip</c> (ML.NET model with a LoRA transformer) and <c>.onnx</c> (exported model) in the paths.</summary>
    /// <param name="ml">The context models are loaded with.</param>
    /// <param name="paths">Model files, or folders whose .zip/.onnx files are all loaded.</param>
    /// <param name="loadOnnx">Loads an exported .onnx file as a transformer (the ONNX scoring package).</param>
    /// <exception cref="ArgumentException">No model was found, or two files have the same name.</exception>
    public static ModelCatalog Load(MLContext ml, IEnumerable<string> paths, Func<string, ITransformer>? loadOnnx = null)
    {
        var catalog = new ModelCatalog();
        try
        {
            var inputSchema = ml.Data.LoadFromEnumerable(Array.Empty<TextInput>()).Schema;
            foreach (string file in paths.SelectMany(Expand))
            {
                string name = System.IO.Path.GetFileNameWithoutExtension(file);
                if (catalog.models.TryGetValue(name, out var existing))
                {
                    throw new ArgumentException($"Two models are named '{name}' ('{existing.Path}' and '{file}'); names must be unique.", nameof(paths));
                }

                ITransformer transformer = file.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase)
                    ? (loadOnnx ?? throw new ArgumentException($"'{file}' is an ONNX model, but no ONNX loader was given.", nameof(loadOnnx)))(file)
                    : ml.Model.Load(file, out _);
                catalog.models[name] = new ServedModel(name, file, ml, transformer, inputSchema);
            }

            if (catalog.models.Count == 0)
            {
                throw new ArgumentException($"No .zip or .onnx model found in [{string.Join(", ", paths)}].", nameof(paths));
            }

            return catalog;
        }
        catch
        {
            catalog.Dispose();
            throw;
        }
    }

    private static IEnumerable<string> Expand(string path) =>
        Directory.Exists(path)
            ? Directory.EnumerateFiles(path).Where(f => f.EndsWith(".zip", StringComparison.OrdinalIgnoreCase) || f.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase)).Order(StringComparer.Ordinal)
            : File.Exists(path) ? [path] : throw new FileNotFoundException($"Model path '{path}' does not exist.", path);

    /// <summary>The models, by name.</summary>
    public IReadOnlyDictionary<string, ServedModel> Models => models;

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (var model in models.Values)
        {
            model.Dispose();
        }

        models.Clear();
    }
}
